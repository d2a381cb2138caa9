"""Write the package lock of the image being built: every Python distribution its interpreter can import, and
every conda package of its environment, as JSON.

Copied into the build context as kenv-lock.py and run by the image's own python in the Dockerfile's last step,
so the lock is alone in the image's last layer, where the operator reads it from the registry (kenv/lock.py).
It runs on whatever python the image has (3.8 or newer): the standard library only, and no failure of its own
ever fails the build (the lock then records the error). Channel and package URLs lose their credentials
(user:password@, conda's /t/<token>/): the lock is stored in the cluster for anyone who may read versions.

Usage: kenv-lock.py LOCK_FILE FALLBACK_FILE [CONDA_PREFIX]. A build whose Dockerfile switched to a user that
cannot write LOCK_FILE (under /etc/kenv) writes FALLBACK_FILE (under /tmp) instead.
"""

import glob
import json
import os
import platform
import re
import sys

LOCK_FORMAT = 1
CREDENTIALS = re.compile(r"//[^/@]*@")
CONDA_TOKEN = re.compile(r"/t/[^/]+/")


def without_credentials(url):
    return CONDA_TOKEN.sub("/", CREDENTIALS.sub("//", url))


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_packages(prefix):
    """One entry per conda-meta record: name, version, build string, channel and sha256."""
    packages = []
    for path in sorted(glob.glob(os.path.join(prefix, "conda-meta", "*.json"))):
        try:
            with open(path, encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not record.get("name"):
            continue
        entry = {"name": str(record["name"]), "version": str(record.get("version", "")), "manager": "conda",
                 "build": str(record.get("build", "")),
                 "channel": without_credentials(str(record.get("channel") or ""))}
        if record.get("sha256"):
            entry["sha256"] = str(record["sha256"])
        packages.append(entry)
    return packages


def python_packages(conda):
    """The distributions this interpreter imports, first on sys.path wins (as `import` does); those a conda
    package installed are listed once, as conda packages."""
    from importlib import metadata

    from_conda = {(normalized(p["name"]), p["version"]) for p in conda}
    seen = set()
    packages = []
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or normalized(name) in seen:
            continue
        seen.add(normalized(name))
        if (normalized(name), dist.version) in from_conda:
            continue
        entry = {"name": name, "version": dist.version, "manager": "pip",
                 "installer": (dist.read_text("INSTALLER") or "").strip()}
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("url"):
            entry["url"] = without_credentials(direct["url"])
        archive = direct.get("archive_info") or {}
        sha256 = (archive.get("hashes") or {}).get("sha256") or archive.get("hash", "").partition("sha256=")[2]
        if sha256:
            entry["sha256"] = sha256
        packages.append(entry)
    return packages


def lock(conda_prefix):
    document = {"lockFormat": LOCK_FORMAT, "python": platform.python_version(), "executable": sys.executable}
    try:
        conda = conda_packages(conda_prefix) if conda_prefix else []
        packages = conda + python_packages(conda)
        document["packages"] = sorted(packages, key=lambda p: (p["manager"], normalized(p["name"])))
    except Exception as error:  # noqa: BLE001 - recorded in the lock; a lock must never fail the build
        document["error"] = f"{error.__class__.__name__}: {error}"
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
