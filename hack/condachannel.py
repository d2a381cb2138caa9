"""A local conda channel for tests: a few tiny packages, Debian's CPython 3.11, and pip and a few pure-python
packages from PyPI (requests and its dependencies, attrs, packaging, six, tqdm) as conda packages.

No conda channel is reachable from this machine, so the packages a conda-based Environment needs are made here with
maintained tools from PyPI: conda-package-handling writes the .conda files, py-rattler indexes the channel (and,
in tests, solves and installs from it). The channel is built once per input digest under CACHE/conda-channel/.

    noarch/    kenv-greeting 1.0 + 2.0, kenv-hello 1.0 (needs kenv-greeting), kenv-pyhello 1.0 (noarch: python),
               pip and hack/condawheels.py's WHEELS (noarch: python, converted from their PyPI wheels)
    linux-64/  python 3.11.x: bin/python3.11 and lib/python3.11 from the Debian rootfs hack/images.py builds

    .venv/bin/python hack/condachannel.py build                             # prints the channel directory
    .venv/bin/python hack/condachannel.py serve --host 127.0.0.1 --port 8000 [--tls] [--user U --password P]

Building needs the dev extra (py-rattler, conda-package-handling); serving needs only stdlib and cryptography.

The python package runs only where Debian bookworm's shared libraries are (libssl3, libffi8, ...): the host and
the images built on the Debian base. It relocates by itself (CPython finds its prefix from the executable's path).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import condawheels
from condaserver import ChannelServer, Request, auth_file, make_tls
from images import CACHE, debian_rootfs, digest_of

__all__ = ["ChannelServer", "Request", "auth_file", "build", "make_tls", "packages", "rattler_install"]

PIP_VERSION = "26.3"
PY_VERSION = "3.11"
TIMESTAMP_MS = 1767225600000  # fixed (2026-01-01): rattler's solver requires a timestamp; fixed keeps builds stable
# Parts of Debian's stdlib a conda env does not need; __pycache__ is rebuilt on first import where writable.
DROPPED_STDLIB = {"test", "__pycache__", "idlelib", "tkinter", "turtledemo", "EXTERNALLY-MANAGED", "sitecustomize.py"}
# Debian's pip scheme outside a venv is posix_local (PREFIX/local/lib/python3.X/dist-packages, scripts in
# PREFIX/local/bin); posix_prefix puts pip's packages next to conda's and its scripts in PREFIX/bin. The build
# fails if the line is not there exactly once. (site.py can't be patched the same way: 3.11 runs a frozen copy.)
SYSCONFIG_PATCH = ("            prefix_scheme = 'posix_local'\n",
                   "            prefix_scheme = 'posix_prefix'  # kenv conda package: conda's layout\n")
# Debian's site.py adds PREFIX/lib/python3.X/site-packages only inside a venv, but conda's noarch: python packages
# are installed there. Replaces Debian's sitecustomize (a symlink to /etc/python3.X/, apport's hook).
SITECUSTOMIZE = '''"""kenv's conda package of Debian's python: conda's site-packages is on sys.path, venv or not."""
import os
import site
import sys

site.addsitedir(os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
'''


def log(message: str) -> None:
    print(f"[condachannel] {message}", file=sys.stderr, flush=True)


def build(root: Path = CACHE, *, python: bool = True, rootfs: Path | None = None) -> Path:
    """The channel directory (built if missing). python=False leaves out python and the PyPI packages, which need
    the Debian rootfs tarball (debootstrap, minutes, the first time) and PyPI; rootfs overrides
    images.debian_rootfs(). Wheels are downloaded once into CACHE/conda-channel/downloads, whatever the root."""
    if python and rootfs is None:
        rootfs = debian_rootfs()
    pins = [f"{name}=={version}" for name, version in (("pip", PIP_VERSION), *condawheels.WHEELS)]
    inputs = [Path(__file__), Path(condawheels.__file__), *pins] + \
        ([rootfs.name, str(rootfs.stat().st_size)] if rootfs else [])
    channel = root / "conda-channel" / digest_of(*inputs)
    if (channel / "noarch/repodata.json").exists():
        return channel
    channel.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="building.", dir=channel.parent))
    try:
        out = work / "channel"
        for subdir in ("noarch", "linux-64"):  # index_fs only indexes subdirs that exist
            (out / subdir).mkdir(parents=True)
        _toy_packages(out / "noarch", work / "stage")
        if rootfs:
            _python_package(out / "linux-64", work / "stage", rootfs)
            _wheel_packages(out / "noarch", work / "stage", CACHE / "conda-channel/downloads")
        _run_rattler(_INDEX_SCRIPT, {"channel": str(out)}, check=True)
        try:
            out.rename(channel)
        except OSError:  # another process finished the same channel first
            if not (channel / "noarch/repodata.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built {channel} in {time.monotonic() - started:.1f}s")
    return channel


def packages(channel: Path) -> list[str]:
    """name-version-build of every package in the channel's repodata."""
    names = []
    for subdir in ("noarch", "linux-64"):
        repodata = json.loads((channel / subdir / "repodata.json").read_text())
        names += [f"{r['name']}-{r['version']}-{r['build']}" for r in repodata.get("packages.conda", {}).values()]
    return sorted(names)


# -- the packages ---------------------------------------------------------------------------------------------

def _toy_packages(noarch: Path, stage: Path) -> None:
    for version in ("1.0", "2.0"):
        _package(noarch, stage, "kenv-greeting", version, {
            "share/kenv-greeting/message.txt": f"hello from kenv-greeting {version}\n"}, noarch="generic")
    # Prints the greeting from its own prefix: proof that the dependency was installed next to it.
    script = ('#!/bin/sh\necho "hello from kenv-hello 1.0"\n'
              'cat "$(dirname "$0")/../share/kenv-greeting/message.txt"\n')
    _package(noarch, stage, "kenv-hello", "1.0", {"bin/kenv-hello": script}, noarch="generic",
             depends=["kenv-greeting >=1.0"], modes={"bin/kenv-hello": 0o755})
    # noarch: python files live under site-packages/; the installer moves them to the env's lib/python3.X/.
    _package(noarch, stage, "kenv-pyhello", "1.0", {
        "site-packages/kenv_pyhello/__init__.py": 'def hello():\n    return "hello from kenv-pyhello 1.0"\n',
        # dist-info lets pip see the package as installed (and by whom), as conda-forge's packages do.
        "site-packages/kenv_pyhello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: kenv-pyhello\n"
                                                              "Version: 1.0\n",
        "site-packages/kenv_pyhello-1.0.dist-info/INSTALLER": "conda\n",
    }, noarch="python", depends=["python >=3.8"])


def _python_package(linux64: Path, stage: Path, rootfs: Path) -> None:
    """bin/python3.11 and lib/python3.11 of the Debian rootfs, versioned like Debian's python3.11-minimal."""
    shutil.rmtree(stage, ignore_errors=True)
    lib = f"usr/lib/python{PY_VERSION}/"
    debian_version = ""
    with tarfile.open(rootfs) as tar:
        for member in tar:  # one pass over a ~200 MB tarball: streaming, no random access
            name = member.name.removeprefix("./")
            if name == "var/lib/dpkg/status":
                debian_version = _dpkg_version(tar.extractfile(member).read().decode(), f"python{PY_VERSION}-minimal")
                continue
            if name == f"usr/bin/python{PY_VERSION}":
                member.name = f"bin/python{PY_VERSION}"
            elif name.startswith(lib) and not DROPPED_STDLIB & set(name[len(lib):].split("/")):
                member.name = name.removeprefix("usr/")
            else:
                continue
            tar.extract(member, stage, filter="data")
    if not debian_version:
        raise RuntimeError(f"no python{PY_VERSION}-minimal in {rootfs}'s dpkg status")
    for link in ("python3", "python"):
        (stage / "bin" / link).symlink_to(f"python{PY_VERSION}")
    stdlib = stage / f"lib/python{PY_VERSION}"
    sysconfig = (stdlib / "sysconfig.py").read_text()
    if sysconfig.count(SYSCONFIG_PATCH[0]) != 1:
        raise RuntimeError(f"sysconfig.py of python {debian_version} changed: cannot make pip use conda's layout")
    (stdlib / "sysconfig.py").write_text(sysconfig.replace(*SYSCONFIG_PATCH))
    (stdlib / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (stdlib / "site-packages").mkdir()
    (stdlib / "site-packages/README.txt").write_text("Conda packages (noarch: python) and pip install here.\n")
    # 3.11.2-6+deb12u8: the upstream version for the solver, Debian's revision in the build string.
    upstream, _, revision = debian_version.partition("-")
    build_string = "debian_" + "".join(c if c.isalnum() else "_" for c in revision)
    _package(linux64, stage, "python", upstream, {}, subdir="linux-64", build=build_string, clean=False,
             license="PSF-2.0")


def _wheel_packages(noarch: Path, stage: Path, downloads: Path) -> None:
    """pip and condawheels.WHEELS: their wheels from PyPI unpacked as noarch: python packages (the installer writes
    bin/pip, bin/tqdm, ... from link.json). pip keeps its own depends: the channel's python, as before."""
    for name, version in (("pip", PIP_VERSION), *condawheels.WHEELS):
        wheel = condawheels.download(name, version, downloads, PY_VERSION)
        staged = condawheels.unpack(wheel, stage, PY_VERSION)
        depends = [f"python {PY_VERSION}.*"] if name == "pip" else staged.depends
        _package(noarch, stage, staged.name, staged.version, {}, noarch="python", depends=depends, clean=False,
                 license=staged.license, entry_points=staged.entry_points)


def _dpkg_version(status: str, package: str) -> str:
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields["Version"]
    return ""


def _package(out: Path, stage: Path, name: str, version: str, files: dict[str, str], *, subdir: str = "noarch",
             noarch: str | None = None, depends: list[str] | None = None, build: str = "0",
             modes: dict[str, int] | None = None, clean: bool = True, license: str = "Apache-2.0",
             entry_points: list[str] | None = None) -> Path:
    """Write files into stage (emptied first unless clean=False: the caller staged a payload), add info/ and pack
    everything as out/NAME-VERSION-BUILD.conda."""
    if clean:
        shutil.rmtree(stage, ignore_errors=True)
    for rel, text in files.items():
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod((modes or {}).get(rel, 0o644))
    payload = _payload_paths(stage)
    index = {"name": name, "version": version, "build": build, "build_number": 0, "depends": depends or [],
             "license": license, "subdir": subdir, "timestamp": TIMESTAMP_MS}
    if noarch:
        index["noarch"] = noarch
    else:
        index.update(arch="x86_64", platform="linux")
    info = stage / "info"
    info.mkdir()
    (info / "index.json").write_text(json.dumps(index, indent=2))
    (info / "paths.json").write_text(json.dumps({"paths_version": 1, "paths": [_paths_entry(stage, p)
                                                                                for p in payload]}, indent=2))
    (info / "files").write_text("".join(f"{p}\n" for p in payload))
    if noarch == "python":
        (info / "link.json").write_text(json.dumps({"noarch": {"type": "python", "entry_points": entry_points or []},
                                                    "package_metadata_version": 1}))
    from conda_package_handling import api  # late: importing this module (to serve) needs no dev extra

    target = out / f"{name}-{version}-{build}.conda"
    # zstd level 10: 0.5 s for python's payload; the default 19 takes ~7 s to save another 12% (5.0 vs 5.7 MB).
    api.create(str(stage), payload + sorted(str(p.relative_to(stage)) for p in info.iterdir()), str(target),
               compression_level=10)
    return target


def _payload_paths(stage: Path) -> list[str]:
    """Files and symlinks under stage, relative and sorted; no directories: the tarball adds them recursively."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(stage):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            paths.append(str((Path(dirpath) / name).relative_to(stage)))
    return sorted(paths)


def _paths_entry(stage: Path, rel: str) -> dict[str, object]:
    path = stage / rel
    if path.is_symlink():
        return {"_path": rel, "path_type": "softlink"}
    data = path.read_bytes()
    return {"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(),
            "size_in_bytes": len(data)}


# -- installing with rattler (tests, manual checks) -----------------------------------------------------------

# py-rattler runs in subprocesses only: it sometimes crashes at interpreter exit (after the work is done), which
# must not take down the caller (a pytest session, say). The scripts flush and leave with os._exit instead.
_EPILOGUE = r"""
try:
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
    code = 0
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    code = 1
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)
"""
_INDEX_SCRIPT = r"""
import asyncio, json, os, sys
import rattler.index

async def main(args):  # index_fs only indexes the subdirs that exist: build() creates noarch/ and linux-64/
    await rattler.index.index_fs(args["channel"], write_zst=False, write_shards=False)
""" + _EPILOGUE
# Client.default_client() carries the middleware that reads RATTLER_AUTH_FILE.
_RATTLER_SCRIPT = r"""
import asyncio, json, os, sys
import rattler
from rattler.networking import Client

async def main(args):
    cache = args["cache"]
    client = Client.default_client()
    gateway = rattler.Gateway(cache_dir=os.path.join(cache, "repodata"), client=client)
    # Parsed leniently like conda ("pkg 1.0" is ==1.0); solve() parses strings strictly and rejects it.
    specs = [rattler.MatchSpec(spec) for spec in args["specs"]]
    records = await rattler.solve(sources=args["channels"], specs=specs, gateway=gateway,
                                  platforms=args["platforms"])
    if args["prefix"]:
        await rattler.install(records, target_prefix=args["prefix"], cache_dir=os.path.join(cache, "pkgs"),
                              client=client, show_progress=False)
    return sorted(f"{r.name.normalized}={r.version}={r.build}" for r in records)
""" + _EPILOGUE


def rattler_install(channel: str, specs: list[str], prefix: Path | None, *, env: dict[str, str] | None = None,
                    cache: Path | None = None, platforms: tuple[str, ...] = ("linux-64", "noarch"),
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Solve specs from channel (a URL or directory) and install into prefix (None: solve only), in a subprocess
    of this python with extra env (SSL_CERT_FILE, RATTLER_AUTH_FILE, ...). stdout: JSON ["name=version=build"];
    stderr: the error, e.g. "SolverError: ... No candidates were found for NAME". A fresh cache unless given."""
    with tempfile.TemporaryDirectory(prefix="kenv-rattler-cache.") as fresh:
        args = {"channels": [channel], "specs": specs, "prefix": str(prefix) if prefix else None,
                "cache": str(cache or fresh), "platforms": list(platforms)}
        return _run_rattler(_RATTLER_SCRIPT, args, env=env, timeout=timeout)


def _run_rattler(script: str, args: dict[str, object], *, env: dict[str, str] | None = None, timeout: float = 300,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"py-rattler failed ({result.returncode}): {result.stderr[-3000:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the channel (once) and print its directory")
    build_cmd.add_argument("--no-python", action="store_true", help="only the toy packages: no rootfs, no PyPI")
    serve = commands.add_parser("serve", help="build, then serve the channel until interrupted")
    serve.add_argument("--no-python", action="store_true")
    serve.add_argument("--host", default="127.0.0.1", help="the one address to bind (never 0.0.0.0)")
    serve.add_argument("--port", type=int, default=0, help="0: a free port")
    serve.add_argument("--tls", action="store_true", help="HTTPS with a throwaway CA (its path is printed)")
    serve.add_argument("--user")
    serve.add_argument("--password")
    serve.add_argument("--token", help="accept this bearer token")
    args = parser.parse_args(argv)
    # Unwind on SIGTERM too: no half-built channel, no server left running, no throwaway CA left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    channel = build(python=not args.no_python)
    if args.command == "build":
        print(channel)
        return 0
    with tempfile.TemporaryDirectory(prefix="kenv-channel-tls.") as tls_dir:
        tls = make_tls(Path(tls_dir), args.host) if args.tls else None
        with ChannelServer(channel, args.host, args.port, user=args.user, password=args.password,
                           token=args.token, tls=tls) as server:
            print(server.url, flush=True)
            log(f"serving {channel}" + (f"; clients must trust {tls.ca}" if tls else "") + "; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
