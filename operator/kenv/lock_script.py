"""Write the package lock of the image being built: every Python distribution its interpreter can import, and
every conda package of its environment, as JSON.

Copied into the build context as kenv-lock.py and run by the image's own python in the Dockerfile's last step,
so the lock is alone in the image's last layer, where the operator reads it from the registry (kenv/lock.py).
It runs on whatever python the image has (3.8 or newer): the standard library only, and no failure of its own
ever fails the build (the lock then records the error; one unreadable package costs only its own entry). Channel
and package URLs lose their credentials (user:password@, conda's /t/<token>/, the query string and fragment):
the lock is stored in the cluster for anyone who may read versions.

Usage: kenv-lock.py LOCK_FILE FALLBACK_FILE [CONDA_PREFIX]. A build whose Dockerfile switched to a user that
cannot write LOCK_FILE (under /etc/kenv) writes FALLBACK_FILE (under /tmp) instead.
"""

import glob
import json
import os
import platform
import re
import sys
from urllib.parse import urlsplit, urlunsplit

LOCK_FORMAT = 1
CONDA_TOKEN = re.compile(r"/t/[^/]+(?=/)")


def without_credentials(url):
    """The URL without user information, conda token, query or fragment (where tokens and signatures live)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it is kept
        return "(a URL that could not be parsed)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, CONDA_TOKEN.sub("", parts.path, count=1), "", ""))


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_packages(prefix):
    """One entry per conda-meta record: name, version, build string, channel and sha256."""
    packages = []
    for path in sorted(glob.glob(os.path.join(prefix, "conda-meta", "*.json"))):
        try:
            entry = conda_package(path)
        except Exception:  # noqa: BLE001 - one unreadable record must not cost the others their entries
            continue
        if entry is not None:
            packages.append(entry)
    return packages


def conda_package(path):
    with open(path, encoding="utf-8") as file:
        record = json.load(file)
    if not isinstance(record, dict) or not record.get("name"):
        return None
    entry = {"name": str(record["name"]), "version": str(record.get("version", "")), "manager": "conda",
             "build": str(record.get("build", "")),
             "channel": without_credentials(str(record.get("channel") or ""))}
    if record.get("sha256"):
        entry["sha256"] = str(record["sha256"])
    return entry


def python_packages(conda, skipped):
    """The distributions this interpreter imports, first on sys.path wins (as `import` does); those a conda
    package installed are listed once, as conda packages. One that cannot be read is counted in `skipped`."""
    from importlib import metadata

    from_conda = {(normalized(p["name"]), p["version"]) for p in conda}
    seen = set()
    packages = []
    for dist in metadata.distributions():
        try:
            entry = python_package(dist)
        except Exception:  # noqa: BLE001 - a broken dist-info must not cost the others their entries
            skipped.append(str(getattr(dist, "_path", "a distribution")))
            continue
        if entry is None or normalized(entry["name"]) in seen:
            continue
        seen.add(normalized(entry["name"]))
        if (normalized(entry["name"]), entry["version"]) not in from_conda:
            packages.append(entry)
    return packages


def python_package(dist):
    name = dist.metadata["Name"]
    if not name:
        return None
    entry = {"name": name, "version": dist.version, "manager": "pip",
             "installer": (dist.read_text("INSTALLER") or "").strip()}
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if isinstance(direct, dict) and isinstance(direct.get("url"), str):
        entry["url"] = without_credentials(direct["url"])
    archive = direct.get("archive_info") if isinstance(direct, dict) else None
    if isinstance(archive, dict):
        hashes = archive.get("hashes")
        legacy = archive.get("hash")
        sha256 = (hashes.get("sha256") if isinstance(hashes, dict) else None) or (
            legacy.partition("sha256=")[2] if isinstance(legacy, str) else "")
        if sha256:
            entry["sha256"] = str(sha256)
    return entry


def lock(conda_prefix):
    document = {"lockFormat": LOCK_FORMAT, "python": platform.python_version()}
    errors, skipped = [], []  # type: list[str], list[str]
    conda, python = [], []  # type: list[dict], list[dict]
    try:
        conda = conda_packages(conda_prefix) if conda_prefix else []
    except Exception as error:  # noqa: BLE001 - recorded in the lock; a lock must never fail the build
        errors.append(f"conda packages: {error.__class__.__name__}: {error}")
    try:
        python = python_packages(conda, skipped)
    except Exception as error:  # noqa: BLE001 - e.g. a python without importlib.metadata (before 3.8)
        errors.append(f"Python distributions: {error.__class__.__name__}: {error}")
    if skipped:
        errors.append(f"{len(skipped)} Python distributions could not be read: {', '.join(skipped[:5])}")
    document["packages"] = sorted(conda + python, key=lambda p: (p["manager"], normalized(p["name"])))
    if errors:
        document["error"] = "; ".join(errors)
    return document


def write(text, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def main(argv):
    target, fallback = argv[1], argv[2]
    text = json.dumps(lock(argv[3] if len(argv) > 3 else ""), indent=1, sort_keys=True) + "\n"
    try:
        write(text, target)
    except OSError:
        write(text, fallback)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
