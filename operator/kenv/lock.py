"""Package locks: the JSON kenv-lock.py writes in an image's last layer, as an EnvironmentVersion holds it
(spec.lock), printed by `kenv packages` and compared by `kenv diff`. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kenv.render import LOCK_FILE as LOCK_PATH
from kenv.tables import aligned
from kenv.versionmodels import LockedPackage, PackageLock

# The packages kept in an EnvironmentVersion, as JSON: the API server refuses objects over ~1.5 MiB, and the
# version also holds its definition and a 32 KiB build log. A few hundred packages take ~100 KiB.
MAX_STORED_BYTES = 512 * 1024


def _entry(item: Any) -> dict[str, Any] | None:
    try:
        return LockedPackage.model_validate(item).model_dump(by_alias=True, exclude_none=True)
    except ValidationError:
        return None


def parse(data: bytes, layer: str) -> dict[str, Any]:
    """spec.lock from the lock file's bytes. Entries that do not fit the schema are left out and counted in
    `error`: the lock comes from inside the image, which a user's Dockerfile controls."""
    try:
        document = json.loads(data)
    except ValueError as error:
        return {"layer": layer, "packages": [], "error": f"the image's lock is not JSON: {error}"[:1024]}
    if not isinstance(document, dict):
        return {"layer": layer, "packages": [], "error": "the image's lock is not a JSON object"}
    listed = document.get("packages")
    items: list[Any] = listed if isinstance(listed, list) else []
    packages = [entry for entry in (_entry(item) for item in items) if entry is not None]
    problems = [str(document["error"])] if document.get("error") else []
    if len(packages) < len(items):
        problems.append(f"{len(items) - len(packages)} entries did not fit the lock's schema and were left out")
    kept = within_budget(packages)
    if len(kept) < len(packages):
        problems.append(f"only the first {len(kept)} of {len(packages)} packages are kept (the version holds "
                        f"at most {MAX_STORED_BYTES // 1024} KiB of them); the image's {LOCK_PATH} has all")
    lock: dict[str, Any] = {"layer": layer, "packages": kept}
    if isinstance(document.get("python"), str):
        lock["python"] = document["python"][:64]
    if problems:
        lock["error"] = "; ".join(problems)[:1024]
    return PackageLock.model_validate(lock).model_dump(by_alias=True, exclude_none=True)


def within_budget(packages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading packages whose JSON fits MAX_STORED_BYTES (and the schema's 20,000 entries)."""
    used = 0
    for count, package in enumerate(packages[:20000]):
        used += len(json.dumps(package)) + 2
        if used > MAX_STORED_BYTES:
            return packages[:count]
    return packages[:20000]


def _key(package: Mapping[str, Any]) -> tuple[str, str]:
    return str(package["manager"]), str(package["name"]).lower()


def _shown(package: Mapping[str, Any]) -> str:
    build = f" ({package['build']})" if package.get("build") else ""
    return f"{package['version']}{build}"


def table(lock: Mapping[str, Any]) -> str:
    rows = [("PACKAGE", "VERSION", "MANAGER", "SOURCE")]
    for package in lock.get("packages") or []:
        source = package.get("channel") or package.get("url") or package.get("installer") or ""
        rows.append((package["name"], _shown(package), package["manager"], source))
    return aligned(rows)


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """One line per package added, removed or changed between two locks (`+ name 1.0`, `- name 1.0`,
    `~ name 1.0 -> 1.1`), sorted by manager and name."""
    old = {_key(p): p for p in (before or {}).get("packages") or []}
    new = {_key(p): p for p in (after or {}).get("packages") or []}
    lines = []
    for key in sorted(old.keys() | new.keys()):
        label = key[1] if key[0] == "pip" else f"{key[1]} (conda)"
        if key not in old:
            lines.append(f"+ {label} {_shown(new[key])}")
        elif key not in new:
            lines.append(f"- {label} {_shown(old[key])}")
        elif _shown(old[key]) != _shown(new[key]):
            lines.append(f"~ {label} {_shown(old[key])} -> {_shown(new[key])}")
    return lines
