"""Operator-wide state and the glue between kopf handlers and the pure/reconcile modules."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import kopf
from kopf._cogs.structs.diffs import diff as kopf_diff  # not exported; what kopf decides changes with
from pydantic import ValidationError

from kenv import admission, buildwatch, catalog, gatewatch, gating, kube, metrics, references, slots, tracking
from kenv.certs import write_serving_certs
from kenv.config import OperatorSettings, get_settings
from kenv.gcpause import freeze_long_lived, time_collections
from kenv.indexfill import IndexFill, NotFull
from kenv.models import GROUP, spec_from_body
from kenv.reconcile import Outcome, Reconciler, rebuild_token
from kenv.refs import EnvironmentRef
from kenv.registry import RegistryClient
from kenv.roles import Role
from kenv.status import changed_fields, rebuild_pending
from kenv.statusmodels import Phase
from kenv.webhookserver import AdmissionServer

PREFIX = GROUP  # our own annotation prefix and finalizer, not kopf.zalando.org
# Where kopf records what it handled: the object's essence as of the last change handled, and handler progress.
DIFFBASE = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
PROGRESS = kopf.AnnotationsProgressStorage(prefix=PREFIX)
_reconciler: Reconciler | None = None
_catalog_task: asyncio.Task[None] | None = None
_watches: list[asyncio.Task[None]] = []
_indexes: admission.Indexes | None = None
_index_fill: IndexFill | None = None


def reconciler() -> Reconciler:
    assert _reconciler is not None, "operator not started"
    return _reconciler


def configure(settings: kopf.OperatorSettings, config: OperatorSettings, indexes: admission.Indexes,
              role: Role) -> None:
    global _reconciler, _indexes, _index_fill
    _indexes = indexes
    time_collections()
    # kopf removes its finalizer from every object no handler of *this* process needs it for: admission replicas
    # (indexes only) would strip the reconciler's on each event, and each re-add costs the reconciler a handling
    # cycle without its change handlers, endlessly. So they are given a name never set on any object.
    settings.persistence.finalizer = f"{PREFIX}/finalizer" if role.reconciles else f"admission.{PREFIX}/never-set"
    settings.persistence.progress_storage = PROGRESS
    settings.persistence.diffbase_storage = DIFFBASE
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per registry request is noise
    # and one per admission request (aiohttp's access log under kopf's INFO root logger) is noise on the hot path
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings.posting.level = logging.WARNING  # our own Events carry the story; one per kopf log line is API load
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.inactivity_timeout = 600
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 20
    if role.admits:
        cert_dir = Path(config.webhook_cert_dir) if config.webhook_cert_dir else write_serving_certs(
            Path(tempfile.mkdtemp(prefix="kenv-webhook-")), [config.webhook_url_host or config.webhook_host])
        settings.admission.server = AdmissionServer(
            indexes, addr=config.webhook_host, port=config.webhook_port,
            host=config.webhook_url_host or config.webhook_host,
            certfile=str(cert_dir / "tls.crt"), pkeyfile=str(cert_dir / "tls.key"), cafile=str(cert_dir / "ca.crt"))
        if config.webhook_managed:
            settings.admission.managed = GROUP
        _index_fill = IndexFill(watched_namespaces(config))
    if role.reconciles:
        _reconciler = Reconciler(config, RegistryClient(config.insecure_registry_list), indexes.versions)


def watched_namespaces(config: OperatorSettings) -> list[str]:
    """The namespaces kopf watches: KENV_NAMESPACES plus the build namespace (where ClusterEnvironments'
    EnvironmentVersions live); empty for all."""
    namespaces = config.namespace_list
    return [*namespaces, config.build_namespace] if namespaces and config.build_namespace not in namespaces \
        else namespaces


def start_catalog(config: OperatorSettings) -> None:
    """Keep the curated ClusterEnvironments applied (KENV_CATALOG set; unset leaves them alone)."""
    global _catalog_task
    entries = config.catalog_entries
    if entries is not None:
        _catalog_task = asyncio.create_task(catalog.keep_in_sync(entries, config.build_namespace,
                                                                  config.catalog_sync_seconds))


def start_watches(config: OperatorSettings) -> None:
    """Reconcile the Environments waiting on a build Job as soon as it finishes (buildwatch.py); learn of every
    pod an admission replica gates (gatewatch.py)."""
    assert _indexes is not None, "operator not configured"
    indexes = _indexes
    _watches.append(asyncio.create_task(buildwatch.follow(
        config.build_namespace, lambda job: buildwatch.waiting_on(job, indexes.environments,
                                                                  indexes.cluster_environments))))
    namespaces: list[str | None] = list(config.namespace_list) or [None]
    _watches.extend(asyncio.create_task(gatewatch.follow(namespace, index_entry)) for namespace in namespaces)


def index_entry(ref: EnvironmentRef) -> dict[str, Any] | None:
    """This process's index entry of an Environment or ClusterEnvironment (its last status, generation and
    rebuild token), if indexed."""
    assert _indexes is not None, "operator not configured"
    index, key = (_indexes.environments, (ref.namespace, ref.name)) if ref.kind == "Environment" \
        else (_indexes.cluster_environments, ref.name)
    entries = list(index.get(key, []))
    return entries[0] if entries else None


async def shutdown() -> None:
    tasks = [task for task in (_catalog_task, *_watches) if task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if _reconciler is not None:
        await _reconciler.registry.close()
    await kube.close()


def environment_ref(kind: str, body: kopf.Body) -> EnvironmentRef:
    return EnvironmentRef(kind=kind, namespace=body.metadata.namespace, name=body.metadata.name)


def change_pending(body: kopf.Body) -> bool:
    """Whether kopf still has a change of this object for a change handler: the essence it recorded as handled
    is not the object's now, compared as kopf's own processing compares them."""
    handled = DIFFBASE.fetch(body=body)
    if handled is None:
        return True  # never handled: the create (or resume) handler has it
    now = DIFFBASE.build(body=body)
    return bool(kopf_diff(PROGRESS.clear(essence=handled), PROGRESS.clear(essence=now)))


def unsettled(body: kopf.Body, **_: Any) -> bool:
    """Timer filter: only Environments that still have something to wait for get polled. A change kopf has not
    handled yet belongs to its change handler (retried until it succeeds): polling it too would do the same work
    twice, and a burst of new Environments would poll itself into a backlog (the same for a metadata change, such
    as buildwatch's nudge). A generation nothing answered with no change pending (a spec edited and reverted before
    kopf looked, a status patch that failed) is polled."""
    status = body.get("status") or {}
    if change_pending(body):
        return False
    if rebuild_pending(status, rebuild_token(body.metadata)):
        return True
    if status.get("phase") == Phase.FAILED:
        return status.get("failedGeneration") != body.metadata.get("generation") or \
            references.changed_since_failure(status, status.get("referencesFingerprint"))
    if gating.may_have_gated_pods(environment_ref(str(body.get("kind")), body)):
        return True  # a pod was gated after the last look (e.g. while the Ready status was being written)
    return status.get("phase") != Phase.READY or status.get("observedGeneration") != body.metadata.get("generation")


async def reconcile(kind: str, body: kopf.Body, logger: logging.Logger, resumed: bool = False) -> None:
    ref = environment_ref(kind, body)
    if resumed:
        gating.check_after_restart(ref)
    started, generation = time.monotonic(), body.metadata.get("generation")
    with slots.reconcile_began(started):
        outcome = await reconciler().reconcile(ref, dict(body), logger)
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    if body.metadata.get("generation") != generation:
        # kopf updated this live body while we awaited: a newer spec's reconcile writes the status; this older
        # answer must not land after it (a timer's patch is applied even once its object moved on).
        logger.debug("generation %s superseded by %s; outcome dropped", generation, body.metadata.get("generation"))
        return
    # The status is written here, before kopf records the change as handled: were kopf to write both, it would
    # patch its annotation first, and in between the object would look handled but not yet Ready, so kopf would
    # start the poll timer, add its finalizer for it and remove it again: three more writes per new Environment.
    # The whole outcome, not just what differs from this body: the body may predate another handler's write (a
    # timer's failedGeneration) that this outcome removes. A status it would leave as it is costs no request.
    if changed_fields(dict(body.get("status") or {}), outcome.status) and \
            not await kube.patch_status(ref, outcome.status):
        return  # deleted meanwhile
    post_events(body, outcome)
    merged = {**dict(body.get("status") or {}), **outcome.status}
    await gating.follow_up(ref, merged, get_settings(), body.metadata.get("generation"),
                           rebuild_token(body.metadata))


def post_events(body: kopf.Body, outcome: Outcome) -> None:
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=kube.event_message(message))


def names_references(body: kopf.Body, **_: Any) -> bool:
    return references.names_references(dict(body))


async def check_references(kind: str, body: kopf.Body, logger: logging.Logger) -> None:
    """Reconcile when a ConfigMap or Secret the spec names changed since the last reconcile recorded it."""
    ref = environment_ref(kind, body)
    try:
        spec = spec_from_body(dict(body.get("spec") or {}))
    except ValidationError:
        return  # the status already says why; nothing to read
    seen = await references.fingerprint(spec, ref.references_namespace(get_settings().build_namespace))
    if seen != (body.get("status") or {}).get("referencesFingerprint"):
        logger.info("a ConfigMap or Secret %s names changed: reconciling", ref.display)
        await reconcile(kind, body, logger)


def tracks_base_image(body: kopf.Body, **_: Any) -> bool:
    return tracking.tracked_spec(dict(body)) is not None


async def check_base_image(kind: str, body: kopf.Body, patch: kopf.Patch, logger: logging.Logger) -> None:
    await tracking.check_base_image(environment_ref(kind, body), body, patch, reconciler(), logger)


async def registry_probe() -> str:
    """Readiness: the destination registry answers the distribution API (a 404 for a probe tag is fine)."""
    config = get_settings()
    with slots.reconcile_began(float("-inf")):  # ahead of any burst of reconciles: a late answer fails liveness
        await reconciler().registry.digest(f"{config.destination_repo}:kenv-probe")
    return "ok"


async def index_probe() -> str:
    """Readiness of admission: the indexes hold every object listed (indexfill.py). Permanent, so kopf answers the
    probe now rather than retrying the handler."""
    assert _index_fill is not None and _indexes is not None, "admission not configured"
    try:
        filling = not _index_fill.full
        fill = await _index_fill.check(_indexes)
        if filling:  # what is loaded now lives as long as the process: out of the collector's walks (gcpause.py)
            freeze_long_lived()
        return fill
    except NotFull as error:
        raise kopf.PermanentError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a failed listing is a failed probe, answered now (not retried)
        raise kopf.PermanentError(f"could not list what to index: {error}") from error
