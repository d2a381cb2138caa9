"""The curated catalog: ClusterEnvironments the operator keeps in the cluster from a list the platform team sets.

Azure ML ships ready environments under a reserved prefix (`AzureML-…`). kenv's are ClusterEnvironments named
`kenv-…`, listed in the chart's `curated.environments` and handed to the operator as KENV_CATALOG (JSON). The
operator applies them (server-side apply, its own field manager, label kenv.dev/curated) at start and every
KENV_CATALOG_SYNC_SECONDS, and deletes curated ones no longer listed (the label's value is the operator's
build namespace). The chart's ValidatingAdmissionPolicy lets only the operator's ServiceAccount create `kenv-…`
ClusterEnvironments or change their spec or that label, so nobody takes a catalog name for their own and an upgrade
of the catalog never collides with a team's environment. One catalog per cluster: each release's policy admits
its own operator only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from kenv import kube
from kenv.errors import describe_validation_error
from kenv.models import API_VERSION, GROUP, VERSION, EnvironmentSpec
from kenv.tables import aligned

CURATED_PREFIX = "kenv-"
CURATED_LABEL = "kenv.dev/curated"
FIELD_MANAGER = "kenv-catalog"
PLURAL = "clusterenvironments"
log = logging.getLogger(__name__)


NAME_PATTERN = re.compile(r"^kenv-[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
WHERE = "KENV_CATALOG (chart value curated.environments)"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    spec: dict[str, Any]  # as the platform team wrote it (validated)


def parse_catalog(text: str) -> list[CatalogEntry]:
    """KENV_CATALOG: a JSON list of {name, spec}. Raises ValueError naming the entry and field at fault."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{WHERE}: not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(items, list):
        raise ValueError(f"{WHERE}: must be a list of {{name, spec}}")
    entries: list[CatalogEntry] = []
    for index, item in enumerate(items):
        where = f"{WHERE}[{index}]"
        if not isinstance(item, dict) or set(item) - {"name", "spec"} or "name" not in item:
            raise ValueError(f"{where}: give exactly `name` and `spec`")
        name = item["name"]
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > 63:
            raise ValueError(f"{where}.name: {name!r} must start with the reserved prefix {CURATED_PREFIX}, then "
                             "lowercase letters, digits, '-' and '.' (at most 63 characters), e.g. kenv-sklearn-1.5")
        if any(entry.name == name for entry in entries):
            raise ValueError(f"{where}.name: {name} is listed twice")
        spec = item.get("spec") or {}
        try:
            EnvironmentSpec.model_validate(spec)
        except ValidationError as error:
            raise ValueError(f"{where} ({name}): {describe_validation_error(error)}") from None
        entries.append(CatalogEntry(name, spec))
    return entries


def desired_object(entry: CatalogEntry, owner: str) -> dict[str, Any]:
    """The ClusterEnvironment as the operator applies it: only the fields the catalog sets. The label value
    names the operator (its build namespace) so two installations never prune each other's catalog."""
    return {"apiVersion": API_VERSION, "kind": "ClusterEnvironment",
            "metadata": {"name": entry.name, "labels": {CURATED_LABEL: owner}},
            "spec": entry.spec}


def stale(found: list[str], entries: list[CatalogEntry]) -> list[str]:
    """Curated ClusterEnvironments in the cluster that the catalog no longer lists. Only names with the reserved
    prefix: a label alone (which a user with patch rights could add) never makes the operator delete anything."""
    listed = {entry.name for entry in entries}
    return sorted(name for name in found if name.startswith(CURATED_PREFIX) and name not in listed)


async def _taken(api: Any, name: str, owner: str) -> bool:
    """Whether `name` exists without this catalog's label (made while no catalog reserved the prefix, or by
    another installation): never overwritten."""
    try:
        found = await api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    except ApiException as error:
        if kube.not_found(error):
            return False
        raise
    return bool(((found.get("metadata") or {}).get("labels") or {}).get(CURATED_LABEL) != owner)


async def sync(entries: list[CatalogEntry], owner: str) -> None:
    api = await kube.custom()
    for entry in entries:
        if await _taken(api, entry.name, owner):
            log.warning("curated ClusterEnvironment %s not applied: a ClusterEnvironment of that name exists and "
                        "is not this catalog's (label %s=%s); rename or delete it", entry.name, CURATED_LABEL,
                        owner)
            continue
        # Server-side apply (creates or updates; fields dropped from the catalog are removed). The client takes
        # _content_type at run time; its typed signature does not list it.
        await api.patch_cluster_custom_object(  # type: ignore[call-arg]
            GROUP, VERSION, PLURAL, entry.name, desired_object(entry, owner), field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml")
    found = await api.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=f"{CURATED_LABEL}={owner}")
    for name in stale([o["metadata"]["name"] for o in found.get("items") or []], entries):
        log.info("deleting curated ClusterEnvironment %s: no longer in the catalog", name)
        try:
            await api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as error:
            if not kube.not_found(error):
                raise


async def keep_in_sync(entries: list[CatalogEntry], owner: str, interval: float) -> None:
    """Background task: apply the catalog now and every `interval` seconds (a deleted entry comes back)."""
    while True:
        try:
            await sync(entries, owner)
        except ApiException as error:
            log.warning("could not apply the curated catalog (HTTP %s %s: %s); retrying in %gs", error.status,
                        error.reason, error.body, interval)
        except Exception:  # noqa: BLE001 - a lost connection must not end the task; the next round retries
            log.exception("could not apply the curated catalog; retrying in %gs", interval)
        await asyncio.sleep(interval)


def catalog_table(objects: list[dict[str, Any]]) -> str:
    """`kenv catalog`: one row per curated ClusterEnvironment, with its status."""
    rows = [("NAME", "PHASE", "VERSION", "IMAGE", "DESCRIPTION")]
    for obj in sorted(objects, key=lambda o: o["metadata"]["name"]):
        status, spec = obj.get("status") or {}, obj.get("spec") or {}
        rows.append((obj["metadata"]["name"], str(status.get("phase") or "Pending"), str(status.get("version") or ""),
                     str(status.get("image") or ""), str(spec.get("description") or "")))
    return aligned(rows)


async def show_catalog() -> int:
    """Print the curated ClusterEnvironments (use them with the pod label kenv.dev/cluster-environment)."""
    try:
        await kube.api_client()
        found = await (await kube.custom()).list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=CURATED_LABEL)
    except ApiException as error:
        print(f"kenv: {error.status} {error.reason}: cannot list ClusterEnvironments", file=sys.stderr)
        return 1
    finally:
        await kube.close()
    items = list(found.get("items") or [])
    if not items:
        print("kenv: no curated ClusterEnvironments (the chart installs them with curated.enabled=true)",
              file=sys.stderr)
        return 1
    sys.stdout.write(catalog_table(items))
    print("(use one with the pod label kenv.dev/cluster-environment: NAME)")
    return 0
