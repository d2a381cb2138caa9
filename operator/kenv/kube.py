"""Thin async access to the API server with kubernetes_asyncio, returning plain dicts (camelCase keys)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kenv.models import GROUP, VERSION
from kenv.refs import EnvironmentRef

_api: client.ApiClient | None = None
log = logging.getLogger(__name__)
WATCH_SECONDS = 270  # the server ends each watch after this; a fresh list follows
LIST_PAGE = 500  # pods per LIST page


async def api_client() -> client.ApiClient:
    """One shared client: in-cluster credentials when present, else the current kubeconfig."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            await config.load_kube_config()
        _api = client.ApiClient()
        if not uses_environment_settings(os.environ):
            # kubernetes_asyncio's session trusts the environment, so aiohttp looks for a ~/.netrc and for proxy
            # variables in threads for every API request: two thread hops per call, for nothing to find
            # (bench/reconcile.py).
            _api.rest_client.pool_manager._trust_env = False
    return _api


def uses_environment_settings(environ: Mapping[str, str]) -> bool:
    """Whether aiohttp's trust_env can matter: a proxy or a netrc file named in the environment, or a netrc file
    where aiohttp looks for one (HOME, else the user's home directory)."""
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return any(environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                 "ALL_PROXY", "all_proxy", "NETRC")) or \
        any((home / name).is_file() for name in (".netrc", "_netrc"))


async def close() -> None:
    global _api
    if _api is not None:
        await _api.close()
        _api = None


def plain(obj: Any) -> Any:
    """A model object as the API's own JSON shape (only called after api_client() made the shared client)."""
    assert _api is not None
    return _api.sanitize_for_serialization(obj)


EVENT_MESSAGE_BYTES = 1024  # the API server counts an Event message's limit in bytes, not characters


def event_message(text: str) -> str:
    """`text` cut to what an Event accepts (a UTF-8 character is never split)."""
    return text.encode()[:EVENT_MESSAGE_BYTES].decode(errors="ignore")


def not_found(error: Exception) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def conflict(error: Exception) -> bool:
    return isinstance(error, ApiException) and error.status == 409


async def core() -> client.CoreV1Api:
    return client.CoreV1Api(await api_client())


async def batch() -> client.BatchV1Api:
    return client.BatchV1Api(await api_client())


async def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(await api_client())


async def read_config_map_key(namespace: str, name: str, key: str) -> str | None:
    try:
        config_map = await (await core()).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if not_found(error):
            return None
        raise
    return (config_map.data or {}).get(key)


async def _secret(namespace: str, name: str) -> Any | None:
    try:
        return await (await core()).read_namespaced_secret(name, namespace)
    except ApiException as error:
        if not_found(error):
            return None
        raise


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """Decoded Secret data, None if missing. Values stay in memory; never log them."""
    secret = await _secret(namespace, name)
    return None if secret is None else _decoded(secret)


def _decoded(secret: Any) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


async def read_secret_with_labels(namespace: str, name: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """(decoded data, labels) of a Secret in one read, None if missing. Values stay in memory; never log them."""
    secret = await _secret(namespace, name)
    return None if secret is None else (_decoded(secret), dict(secret.metadata.labels or {}))


async def read_docker_config(namespace: str, name: str) -> dict[str, Any] | None:
    data = await read_secret(namespace, name)
    if data is None or ".dockerconfigjson" not in data:
        return None
    loaded: dict[str, Any] = json.loads(data[".dockerconfigjson"])
    return loaded


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create; on 409 return the existing object (deterministic names make creation idempotent)."""
    kind, namespace, name = obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]
    created: Any
    body: Any = obj  # the client serialises plain dicts as they are
    try:
        if kind == "Job":
            created = await (await batch()).create_namespaced_job(namespace, body)
        elif kind == "ConfigMap":
            created = await (await core()).create_namespaced_config_map(namespace, body)
        elif kind == "Secret":
            created = await (await core()).create_namespaced_secret(namespace, body)
        else:
            raise ValueError(f"unsupported kind {kind}")
        return dict(plain(created))
    except ApiException as error:
        if not conflict(error):
            raise
    if kind == "Job":
        return dict(plain(await (await batch()).read_namespaced_job(name, namespace)))
    if kind == "ConfigMap":
        return dict(plain(await (await core()).read_namespaced_config_map(name, namespace)))
    return dict(plain(await (await core()).read_namespaced_secret(name, namespace)))


async def set_owner(kind: str, namespace: str, name: str, owner: dict[str, Any]) -> None:
    patch = {"metadata": {"ownerReferences": [owner]}}
    api = await core()
    if kind == "ConfigMap":
        await api.patch_namespaced_config_map(name, namespace, patch)
    else:
        await api.patch_namespaced_secret(name, namespace, patch)


async def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Jobs by label selector, a page at a time (list_paged)."""
    return await list_paged((await batch()).list_namespaced_job, namespace, label_selector=selector)


async def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(plain(await (await batch()).read_namespaced_job(name, namespace)))
    except ApiException as error:
        if not_found(error):
            return None
        raise


async def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    return await list_pods(namespace, f"job-name={job_name}")


async def pod_log_tail(namespace: str, pod: str, lines: int = 20, container: str | None = None) -> str | None:
    """Last lines of a pod's log (of `container`: needed when it has several), None when the cluster cannot serve
    logs (e.g. no kubelet)."""
    try:
        api = await core()
        if container:
            text = await api.read_namespaced_pod_log(pod, namespace, tail_lines=lines, container=container)
        else:
            text = await api.read_namespaced_pod_log(pod, namespace, tail_lines=lines)
        return str(text)
    except Exception:  # noqa: BLE001 - logs are best effort; their absence is reported, not fatal
        return None


async def list_plain(list_call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A LIST call's answer as the API's JSON. Not the client's model objects: building them costs far more CPU
    than the JSON, all of it on the event loop (a new leader's list of a few thousand pods blocked the loop past
    its Lease's renew deadline)."""
    response = await list_call(*args, _preload_content=False, **kwargs)
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body.decode(errors="replace")
        raise error
    return dict(json.loads(body))


async def list_pods(namespace: str | None, selector: str, fields: str = "") -> list[dict[str, Any]]:
    """Pods by label (and field) selector, a page at a time: no page's JSON holds the event loop for long."""
    api = await core()
    call, args = (api.list_namespaced_pod, (namespace,)) if namespace else (api.list_pod_for_all_namespaces, ())
    return await list_paged(call, *args, label_selector=selector, field_selector=fields or None)


async def list_paged(call: Any, *args: Any, **selectors: Any) -> list[dict[str, Any]]:
    """Every item of a list call, LIST_PAGE at a time: no page's JSON holds the event loop for long."""
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        page = await list_plain(call, *args, **selectors, limit=LIST_PAGE, _continue=after or None)
        items += page.get("items") or []
        after = (page.get("metadata") or {}).get("continue") or ""
        if not after:
            return items


async def environment_pods(ref: EnvironmentRef, watched: list[str], labels: str = "", fields: str = "",
                           ) -> list[dict[str, Any]]:
    """Every pod labelled for this environment (narrowed by the `labels` and `fields` selectors), wherever the
    operator may list them (see ref.pod_namespaces)."""
    selector = ",".join(filter(None, (f"{ref.pod_label}={ref.name}", labels)))
    return [p for namespace in ref.pod_namespaces(watched) for p in await list_pods(namespace, selector, fields)]


async def json_patch_pod(namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
    """A list body makes the client send application/json-patch+json."""
    await (await core()).patch_namespaced_pod(name, namespace, patch)


async def merge_patch(ref: EnvironmentRef, body: Mapping[str, Any], status: bool = False) -> None:
    """A JSON merge patch of an Environment or a ClusterEnvironment (with `status`, of its status subresource).
    The client's default for a dict is a JSON Patch, which wants a list."""
    api, merge = await custom(), "application/merge-patch+json"
    scope, where = ("cluster", [ref.plural, ref.name]) if ref.namespace is None \
        else ("namespaced", [ref.namespace, ref.plural, ref.name])
    # by name: the client's type stubs know neither `_content_type` nor one call for both scopes
    patch = getattr(api, f"patch_{scope}_custom_object{'_status' if status else ''}")
    await patch(GROUP, VERSION, *where, body, _content_type=merge)


async def patch_status(ref: EnvironmentRef, status: Mapping[str, Any]) -> bool:
    """Merge `status` into an Environment's or ClusterEnvironment's status (None removes a field); False when the
    object is gone."""
    try:
        await merge_patch(ref, {"status": dict(status)}, status=True)
    except ApiException as error:
        if not_found(error):
            return False
        raise
    return True


async def read_environment(name: str, namespace: str | None, cluster: bool) -> dict[str, Any]:
    """An Environment (in `namespace`, else the kubeconfig's) or, with `cluster`, a ClusterEnvironment."""
    await api_client()
    api = await custom()
    if cluster:
        return dict(await api.get_cluster_custom_object(GROUP, VERSION, "clusterenvironments", name))
    return dict(await api.get_namespaced_custom_object(GROUP, VERSION, namespace or current_namespace(),
                                                      "environments", name))


def current_namespace() -> str:
    """The kubeconfig context's namespace, like kubectl."""
    try:
        _, context = config.list_kube_config_contexts()
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # noqa: BLE001 - no kubeconfig context: kubectl's default
        return "default"


async def list_and_watch(list_call: Callable[..., Awaitable[Any]], args: tuple[Any, ...], selector: str,
                         on_list: Callable[[list[dict[str, Any]]], Awaitable[None]],
                         on_change: Callable[[dict[str, Any]], Awaitable[None]], what: str,
                         retry_seconds: float = 5.0) -> None:
    """Until cancelled: list `list_call(*args)` by `selector` (`on_list(items)`), then watch from that list's
    resourceVersion (`on_change(object)` per ADDED or MODIFIED). A server-side timeout ends each watch cleanly,
    then a fresh list; the client timeout catches a connection that died without a word; 410 Gone (the
    resourceVersion expired) lists again at once; any other failure is retried after `retry_seconds`."""
    while True:
        try:
            listing = await list_plain(list_call, *args, label_selector=selector)
            await on_list(list(listing.get("items") or []))
            async with watch.Watch().stream(list_call, *args, label_selector=selector,
                                            resource_version=listing["metadata"]["resourceVersion"],
                                            timeout_seconds=WATCH_SECONDS,
                                            _request_timeout=WATCH_SECONDS + 30) as stream:
                async for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        await on_change(event["raw_object"])
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            if error.status != 410:
                log.warning("watching %s failed (%s); retrying in %.0f s", what, error.reason, retry_seconds)
                await asyncio.sleep(retry_seconds)
        except Exception as error:  # noqa: BLE001 - the watch must outlive any API hiccup; the poll covers the gap
            log.warning("watching %s failed (%s: %s); retrying in %.0f s", what, type(error).__name__, error,
                        retry_seconds)
            await asyncio.sleep(retry_seconds)
