"""kopf entry point: the handlers, and which of them each role's process registers (registry()). The logic lives
in reconcile.py, admission.py and gating.py."""

# kopf types handlers as callback protocols listing every keyword; ours take the few they use plus **_.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import functools
import logging
from typing import Any

import kopf
from kopf._core.intents.registries import SmartOperatorRegistry  # not exported; kopf's default registry's class

from kenv import admission, runtime
from kenv.config import get_settings
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL, GROUP, VERSION
from kenv.roles import Role
from kenv.versionmodels import VERSIONS

SETTINGS = get_settings()  # fails at import, i.e. at start, with every bad KENV_* variable named
ENVIRONMENTS = (GROUP, VERSION, "environments")
CLUSTER_ENVIRONMENTS = (GROUP, VERSION, "clusterenvironments")


def startup(role: Role, settings: kopf.OperatorSettings, environments: kopf.Index, cluster_environments: kopf.Index,
            environment_versions: kopf.Index, **_: Any) -> None:
    runtime.configure(settings, SETTINGS, admission.Indexes(environments, cluster_environments, environment_versions),
                      role)


async def start_catalog(**_: Any) -> None:
    runtime.start_catalog(SETTINGS)


async def start_watches(**_: Any) -> None:
    runtime.start_watches(SETTINGS)


async def cleanup(**_: Any) -> None:
    await runtime.shutdown()


async def registry_probe(**_: Any) -> str:
    return await runtime.registry_probe()


async def index_probe(**_: Any) -> str:
    return await runtime.index_probe()


# --- Environments and ClusterEnvironments: build the image, record the digest -------------------------------

async def environment_resumed(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, logger, resumed=True)


async def environment_changed(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, logger)


async def environment_poll(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("Environment", body, logger)


async def cluster_environment_resumed(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, logger, resumed=True)


async def cluster_environment_changed(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, logger)


async def cluster_environment_poll(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.reconcile("ClusterEnvironment", body, logger)


async def environment_references(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.check_references("Environment", body, logger)


async def cluster_environment_references(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    await runtime.check_references("ClusterEnvironment", body, logger)


async def environment_base_image(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    await runtime.check_base_image("Environment", body, patch, logger)


async def cluster_environment_base_image(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger,
                                         **_: Any) -> None:
    await runtime.check_base_image("ClusterEnvironment", body, patch, logger)


# --- In-memory indexes: admission never calls the API server on its hot path ------------------------------

def environments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): admission.indexed(body)}


def cluster_environments(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: admission.indexed(body)}


def environment_versions(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return admission.indexed_version(body)


# --- Admission: inject the image, variables, secrets and bootstrap into labelled pods ---------------------

def inject_environment(body: kopf.Body, patch: kopf.Patch, warnings: list[str], environments: kopf.Index,
                       environment_versions: kopf.Index, dryrun: bool, **_: Any) -> None:
    admission.inject("Environment", body, patch, warnings, environments, environment_versions, dryrun)


def inject_cluster_environment(body: kopf.Body, patch: kopf.Patch, warnings: list[str],
                               cluster_environments: kopf.Index, environment_versions: kopf.Index,
                               dryrun: bool, **_: Any) -> None:
    admission.inject("ClusterEnvironment", body, patch, warnings, cluster_environments, environment_versions,
                     dryrun)


def registry(role: Role) -> kopf.OperatorRegistry:
    """The handlers a process of `role` runs (roles.py). Every role keeps the three indexes: admission answers
    from them, the reconciler finds the Environments a finished build Job or a gated pod belongs to."""
    registry = SmartOperatorRegistry()  # with kopf's fallback logins (the API client's credentials)
    kopf.on.startup(registry=registry, id="startup")(functools.partial(startup, role))
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.index(*ENVIRONMENTS, registry=registry)(environments)
    kopf.index(*CLUSTER_ENVIRONMENTS, registry=registry)(cluster_environments)
    kopf.index(*VERSIONS, registry=registry)(environment_versions)
    if role.reconciles:
        _register_reconciler(registry)
    if role.admits:
        _register_admission(registry)
    return registry


def _register_reconciler(registry: kopf.OperatorRegistry) -> None:
    on, poll = kopf.on, SETTINGS.poll_seconds
    on.startup(registry=registry)(start_catalog)
    on.startup(registry=registry)(start_watches)
    on.probe(id="registry", registry=registry)(registry_probe)
    # A failed change handler is retried at the poll interval, not kopf's 60 s: the poll timer leaves a change
    # kopf has not handled yet to these handlers (runtime.unsettled).
    for resource, resumed, changed, polled, references, base_image in (
            (ENVIRONMENTS, environment_resumed, environment_changed, environment_poll, environment_references,
             environment_base_image),
            (CLUSTER_ENVIRONMENTS, cluster_environment_resumed, cluster_environment_changed,
             cluster_environment_poll, cluster_environment_references, cluster_environment_base_image)):
        on.resume(*resource, backoff=poll, registry=registry)(resumed)
        on.create(*resource, backoff=poll, registry=registry)(changed)
        on.update(*resource, backoff=poll, registry=registry)(changed)
        kopf.timer(*resource, interval=poll, initial_delay=poll, when=runtime.unsettled,
                   registry=registry)(polled)
        kopf.timer(*resource, interval=SETTINGS.reference_check_seconds,
                   initial_delay=SETTINGS.reference_check_seconds, when=runtime.names_references,
                   registry=registry)(references)
        kopf.timer(*resource, interval=SETTINGS.base_image_check_seconds, when=runtime.tracks_base_image,
                   registry=registry)(base_image)


def _register_admission(registry: kopf.OperatorRegistry) -> None:
    """failurePolicy Fail (ignore_failures=False) only for pods carrying our labels (the objectSelector): a pod
    that asked for an environment must not start without it; every other pod never reaches this webhook."""
    kopf.on.probe(id="index", registry=registry)(index_probe)
    kopf.on.mutate("", "v1", "pods", id="inject-environment", operations={"CREATE"}, ignore_failures=False,
                   labels={ENVIRONMENT_LABEL: kopf.PRESENT}, registry=registry)(inject_environment)
    kopf.on.mutate("", "v1", "pods", id="inject-cluster-environment", operations={"CREATE"},
                   ignore_failures=False, labels={CLUSTER_ENVIRONMENT_LABEL: kopf.PRESENT},
                   registry=registry)(inject_cluster_environment)
