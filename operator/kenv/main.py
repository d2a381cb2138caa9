"""kopf entry point: decorators only. The logic lives in reconcile.py, admission.py and gating.py."""

# kopf types handlers as callback protocols listing every keyword; ours take the few they use plus **_.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import logging
from typing import Any

import kopf

from kenv import admission, runtime
from kenv.config import get_settings
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL, GROUP, VERSION
from kenv.versionmodels import VERSIONS

SETTINGS = get_settings()  # fails at import, i.e. at start, with every bad KENV_* variable named
ENVIRONMENTS = (GROUP, VERSION, "environments")
CLUSTER_ENVIRONMENTS = (GROUP, VERSION, "clusterenvironments")


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, environments: kopf.Index, cluster_environments: kopf.Index,
            environment_versions: kopf.Index, **_: Any) -> None:
    runtime.configure(settings, SETTINGS, admission.Indexes(environments, cluster_environments, environment_versions))


@kopf.on.startup()
async def start_catalog(**_: Any) -> None:
    runtime.start_catalog(SETTINGS)


@kopf.on.startup()
async def start_build_watch(**_: Any) -> None:
    runtime.start_build_watch(SETTINGS)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await runtime.shutdown()


@kopf.on.probe(id="registry")
async def registry_probe(**_: Any) -> str:
    return await runtime.registry_probe()


# --- Environments and ClusterEnvironments: build the image, record the digest -------------------------------
# A failed change handler is retried at the poll interval, not kopf's 60 s: the poll timer leaves a change kopf
# has not handled yet to these handlers (runtime.unsettled).

@kopf.on.resume(*ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
async def environment_resumed(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, patch, logger, resumed=True)


@kopf.on.create(*ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
@kopf.on.update(*ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
async def environment_changed(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, patch, logger)


@kopf.timer(*ENVIRONMENTS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds,
             when=runtime.unsettled)
async def environment_poll(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, patch, logger)


@kopf.on.resume(*CLUSTER_ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
async def cluster_environment_resumed(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                      **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, patch, logger, resumed=True)


@kopf.on.create(*CLUSTER_ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
@kopf.on.update(*CLUSTER_ENVIRONMENTS, backoff=SETTINGS.poll_seconds)
async def cluster_environment_changed(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                      **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, patch, logger)


@kopf.timer(*CLUSTER_ENVIRONMENTS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds,
             when=runtime.unsettled)
async def cluster_environment_poll(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                   **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, patch, logger)


@kopf.timer(*ENVIRONMENTS, interval=SETTINGS.reference_check_seconds, initial_delay=SETTINGS.reference_check_seconds,
             when=runtime.names_references)
async def environment_references(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.check_references("Environment", body, patch, logger)


@kopf.timer(*CLUSTER_ENVIRONMENTS, interval=SETTINGS.reference_check_seconds,
             initial_delay=SETTINGS.reference_check_seconds, when=runtime.names_references)
async def cluster_environment_references(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                         **_: Any) -> None:
    await runtime.check_references("ClusterEnvironment", body, patch, logger)


@kopf.timer(*ENVIRONMENTS, interval=SETTINGS.base_image_check_seconds, when=runtime.tracks_base_image)
async def environment_base_image(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.check_base_image("Environment", body, patch, logger)


@kopf.timer(*CLUSTER_ENVIRONMENTS, interval=SETTINGS.base_image_check_seconds, when=runtime.tracks_base_image)
async def cluster_environment_base_image(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                         **_: Any) -> None:
    await runtime.check_base_image("ClusterEnvironment", body, patch, logger)


# --- In-memory indexes: admission never calls the API server on its hot path ------------------------------

@kopf.index(*ENVIRONMENTS)
def environments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): admission.indexed(body)}


@kopf.index(*CLUSTER_ENVIRONMENTS)
def cluster_environments(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: admission.indexed(body)}


@kopf.index(*VERSIONS)
def environment_versions(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return admission.indexed_version(body)


# --- Admission: inject the image, variables, secrets and bootstrap into labelled pods ---------------------
# failurePolicy Fail (ignore_failures=False) only for pods carrying our labels (the objectSelector): a pod that
# asked for an environment must not start without it; every other pod never reaches this webhook.

@kopf.on.mutate("", "v1", "pods", id="inject-environment", operations={"CREATE"}, ignore_failures=False,
                labels={ENVIRONMENT_LABEL: kopf.PRESENT})
def inject_environment(body: kopf.Body, patch: kopf.Patch, warnings: list[str], environments: kopf.Index,
                       environment_versions: kopf.Index, dryrun: bool, **_: Any) -> None:
    admission.inject("Environment", body, patch, warnings, environments, environment_versions, dryrun)


@kopf.on.mutate("", "v1", "pods", id="inject-cluster-environment", operations={"CREATE"}, ignore_failures=False,
                labels={CLUSTER_ENVIRONMENT_LABEL: kopf.PRESENT})
def inject_cluster_environment(body: kopf.Body, patch: kopf.Patch, warnings: list[str],
                               cluster_environments: kopf.Index, environment_versions: kopf.Index,
                               dryrun: bool, **_: Any) -> None:
    admission.inject("ClusterEnvironment", body, patch, warnings, cluster_environments, environment_versions,
                     dryrun)
