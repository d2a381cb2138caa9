"""Package locks: the JSON kenv-lock.py writes in an image's last layer, as an EnvironmentVersion holds it
(spec.lock), printed by `kenv packages` and compared by `kenv diff`. Pure functions.

The lock comes from inside the image, which a user's Dockerfile controls, so nothing in it is trusted: entries
are validated one by one, a bad optional field costs only that field, a bad entry only that entry, and each loss
is said in `error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kenv.lock_script import normalized  # PEP 503, as the script itself compares names
from kenv.render import LOCK_FILE
from kenv.tables import aligned
from kenv.versionmodels import MAX_PACKAGES, LockedPackage, PackageLock

REQUIRED = ("name", "version", "manager")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, limit: int) -> str:
    """Text from the image made safe to store and print: no control characters, no lone surrogates."""
    return CONTROL.sub("?", text[:limit]).encode("utf-8", "replace").decode("utf-8")


def _entry(item: Any) -> dict[str, Any] | None:
    """The entry as the schema takes it: optional fields that do not fit are dropped; None if a required one
    does not."""
    if not isinstance(item, dict):
        return None
    for _ in range(2):
        try:
            return LockedPackage.model_validate(item).model_dump(by_alias=True, exclude_none=True)
        except ValidationError as error:
            bad = {str(problem["loc"][0]) for problem in error.errors() if problem["loc"]}
            if bad & set(REQUIRED) or not bad:
                return None
            item = {key: value for key, value in item.items() if key not in bad}
    return None


def parse(data: bytes, layer: str) -> dict[str, Any]:
    """spec.lock from the lock file's bytes."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        return {"layer": layer, "packages": [], "error": f"the image's lock is not JSON: {error}"[:1024]}
    if not isinstance(document, dict):
        return {"layer": layer, "packages": [], "error": "the image's lock is not a JSON object"}
    listed = document.get("packages")
    items: list[Any] = listed if isinstance(listed, list) else []
    problems = [printable(str(document["error"]), 512)] if document.get("error") else []
    if len(items) > MAX_PACKAGES:
        problems.append(f"{len(items) - MAX_PACKAGES} packages beyond the first {MAX_PACKAGES} were left out")
        items = items[:MAX_PACKAGES]
    packages = [entry for entry in (_entry(item) for item in items) if entry is not None]
    if len(packages) < len(items):
        problems.append(f"{len(items) - len(packages)} entries did not fit the lock's schema and were left out")
    lock: dict[str, Any] = {"layer": layer, "packages": packages}
    python = document.get("python")
    if isinstance(python, str) and re.fullmatch(r"[0-9A-Za-z.+-]{1,64}", python):
        lock["python"] = python
    if problems:
        lock["error"] = "; ".join(problems)[:1024]
    return PackageLock.model_validate(lock).model_dump(by_alias=True, exclude_none=True)


def fit(lock: dict[str, Any], budget: int) -> dict[str, Any]:
    """The lock with as many leading packages as fit `budget` bytes of JSON, saying so when some do not (the API
    server refuses objects over ~1.5 MiB, and a version also holds its definition and build log)."""
    used, kept = 0, []
    packages = lock.get("packages") or []
    for package in packages:
        used += len(json.dumps(package)) + 2
        if used > budget:
            break
        kept.append(package)
    if len(kept) == len(packages):
        return lock
    note = (f"only the first {len(kept)} of {len(packages)} packages are kept (the version had room for "
            f"{max(budget, 0) // 1024} KiB of them); the image's {LOCK_FILE} has all")
    error = "; ".join(filter(None, [lock.get("error"), note]))[:1024]
    return {**lock, "packages": kept, "error": error}


def _key(package: Mapping[str, Any]) -> tuple[str, str]:
    """pip names compare as PEP 503 says; conda's are their own (conda-forge ships typing-extensions and
    typing_extensions as two packages)."""
    name = str(package["name"])
    return str(package["manager"]), normalized(name) if package["manager"] == "pip" else name.lower()


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
        name = (new.get(key) or old[key])["name"]
        label = name if key[0] == "pip" else f"{name} (conda)"
        if key not in old:
            lines.append(f"+ {label} {_shown(new[key])}")
        elif key not in new:
            lines.append(f"- {label} {_shown(old[key])}")
        elif _shown(old[key]) != _shown(new[key]):
            lines.append(f"~ {label} {_shown(old[key])} -> {_shown(new[key])}")
    return lines
