"""The images the local cluster's pods need, built on this machine and pushed to the cluster's registry.

No Docker engine and no upstream registry here, so every image a pod runs is made with buildah from things this
machine can get: the pause image (a static binary from hack/images/pause.c), the Kaniko executor image (the executor
hack/build-kaniko.sh builds from the Go module proxy, laid out like gcr.io/kaniko-project/executor), the
Debian/python3 base image (debootstrap from Debian's mirror), the operator image (hack/operator.Dockerfile), a
buildah builder image (Debian's buildah package) and the conda installer image (py-rattler from PyPI). Each is
tagged with a hash of its inputs and kept in buildah's local storage, so it is rebuilt only when an input changed
and pushed only when the registry lacks it.

    python hack/images.py build pause kaniko base operator [--push HOST:PORT]   # prints one reference per image

Only stdlib, so it works before the project itself is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from procs import script_output

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
BUILDAH = ["buildah", "--storage-driver", "vfs"]
CACHE = Path(os.environ.get("KENV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kenv")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # includes the TLS proxy's CA on this machine
PUBLIC_CAS = Path("/usr/share/ca-certificates/mozilla")  # Debian's copy of Mozilla's bundle, no local CAs
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Where each image goes in a registry; the tag is the content hash (the base image keeps the examples' tag).
REPOSITORIES = {"pause": "kenv/pause", "kaniko": "kenv/kaniko-executor", "base": "kenv/base/python",
                "operator": "kenv/operator", "buildah": "kenv/buildah", "buildkit": "kenv/buildkit",
                "conda-installer": "kenv/conda-installer", "floor-webhook": "kenv/bench/floor-webhook"}


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _is_build_input(path: Path) -> bool:
    """What .dockerignore lets into a build: no bytecode, no egg-info from an editable install."""
    return path.is_file() and not any(p == "__pycache__" or p.endswith(".egg-info") for p in path.parts)


def digest_of(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for f in sorted(p for p in part.rglob("*") if _is_build_input(p)):
                    h.update(str(f.relative_to(part)).encode() + b"\0" + f.read_bytes())
            else:
                h.update(part.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def buildah(*args: str, capture: bool = True) -> str:
    result = subprocess.run([*BUILDAH, *args], stdout=subprocess.PIPE if capture else sys.stderr,
                            stderr=subprocess.PIPE if capture else sys.stderr, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({result.returncode}): {(result.stderr or '')[-3000:]}")
    return (result.stdout or "").strip()


def have_local(ref: str) -> bool:
    return subprocess.run([*BUILDAH, "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def image_id(ref: str) -> str:
    return buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)


def from_scratch(ref: str, files: dict[str, Path | bytes], config: list[str], modes: dict[str, int]) -> None:
    """A FROM-scratch image holding `files` (image path -> host file or bytes)."""
    with tempfile.TemporaryDirectory(prefix="kenv-image-") as staging:
        for dest, source in files.items():
            target = Path(staging) / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if dest.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.write_bytes(source.read_bytes() if isinstance(source, Path) else source)
            target.chmod(modes.get(dest, 0o644))
        container = buildah("from", "scratch")
        try:
            buildah("add", container, staging, "/")
            buildah("config", *config, container)
            buildah("commit", "--quiet", container, ref)
        finally:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True)


# -- the images -----------------------------------------------------------------------------------------------

def pause() -> str:
    source = HACK / "images/pause.c"
    ref = f"localhost/{REPOSITORIES['pause']}:{digest_of(source)}"
    if not have_local(ref):
        log(f"building {ref}")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            subprocess.run(["gcc", "-Os", "-static", "-s", "-o", str(binary), str(source)], check=True)
            from_scratch(ref, {"/pause": binary}, ["--entrypoint", '["/pause"]', "--user", "65535:65535"],
                         {"/pause": 0o755})
    return ref


def kaniko_executor_binary() -> Path:
    return Path(script_output(HACK / "build-kaniko.sh"))


def public_ca_bundle() -> bytes:
    return b"".join(p.read_bytes() for p in sorted(PUBLIC_CAS.glob("*.crt")))


def kaniko() -> str:
    """Laid out like the upstream executor image: /kaniko/executor as the entrypoint, its CA bundle in
    /kaniko/ssl/certs, DOCKER_CONFIG=/kaniko/.docker/, WORKDIR /workspace. The bundle holds only public CAs:
    a build's own CAs (a proxy's, a private registry's) come from spec.build.caBundle."""
    executor, cas = kaniko_executor_binary(), public_ca_bundle()
    version = executor.parent.name.removeprefix("kaniko-")
    ref = f"localhost/{REPOSITORIES['kaniko']}:{version}-{digest_of(executor, cas, 'layout-2')}"
    if not have_local(ref):
        log(f"building {ref}")
        files: dict[str, Path | bytes] = {"/kaniko/executor": executor, "/kaniko/ssl/certs/ca-certificates.crt": cas,
                                          "/kaniko/.docker/": b"", "/workspace/": b"",
                                          "/etc/nsswitch.conf": b"hosts: files dns\n"}
        env = {"HOME": "/root", "USER": "root", "PATH": "/usr/local/bin:/kaniko", "SSL_CERT_DIR": "/kaniko/ssl/certs",
               "DOCKER_CONFIG": "/kaniko/.docker/"}
        config = [arg for k, v in env.items() for arg in ("--env", f"{k}={v}")]
        # User 0 by number: there is no /etc/passwd to look a name up in.
        from_scratch(ref, files, [*config, "--workingdir", "/workspace", "--entrypoint", '["/kaniko/executor"]',
                                  "--user", "0:0"], {"/kaniko/executor": 0o755})
    return ref


def debian_rootfs() -> Path:
    """A Debian root filesystem with python3, pip and venv from Debian's mirror, cached as a tarball."""
    tarball = CACHE / f"base/debian-{DEBIAN_SUITE}-python3-v2.tar"
    if not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="rootfs.", dir=tarball.parent))
        log(f"debootstrap {DEBIAN_SUITE} into {root} (first time only, a few minutes)")
        packages = "python3,python3-pip,python3-venv,ca-certificates"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", DEBIAN_SUITE, str(root),
                        DEBIAN_MIRROR], check=True, stdout=sys.stderr)
        subprocess.run(f"rm -rf {root}/var/cache/apt/archives/*.deb {root}/var/lib/apt/lists/*", shell=True, check=True)
        subprocess.run(["tar", "-C", str(root), "-cf", f"{tarball}.tmp", "."], check=True)
        os.replace(f"{tarball}.tmp", tarball)
        subprocess.run(["rm", "-rf", str(root)], check=True)
    return tarball


def base() -> str:
    tarball = debian_rootfs()
    ref = f"localhost/{REPOSITORIES['base']}:3.11-{DEBIAN_SUITE}-{digest_of(str(tarball.stat().st_size), tarball.name)}"
    if not have_local(ref):
        log(f"building {ref}")
        container = buildah("from", "scratch")
        try:
            buildah("add", container, str(tarball), "/")
            buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd", "/usr/bin/python3", container)
            buildah("commit", "--quiet", container, ref)
        finally:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True)
    return ref


def from_dockerfile(name: str, dockerfile: Path, context: Path, inputs: list[Path], pip_ca: bool) -> str:
    """A `buildah bud` of dockerfile on the base image; pip inside trusts the host's CA bundle (the proxy's CA
    included) for the build only."""
    base_ref = base()
    ref = f"localhost/{REPOSITORIES[name]}:{digest_of(dockerfile, *inputs, image_id(base_ref))}"
    if not have_local(ref):
        log(f"building {ref} from {dockerfile.relative_to(ROOT)}")
        ca = ["-v", f"{HOST_CA}:/run/kenv-ca.crt:ro", "--build-arg", "PIP_CERT=/run/kenv-ca.crt"] \
            if pip_ca and HOST_CA.exists() else []
        buildah("bud", "--isolation", "chroot", "--layers=false", "--build-arg", f"BASE_IMAGE={base_ref}", *ca,
                "-f", str(dockerfile), "-t", ref, str(context), capture=False)
    return ref


def operator() -> str:
    return from_dockerfile("operator", HACK / "operator.Dockerfile", ROOT,
                           [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "operator"], pip_ca=True)


def buildah_builder() -> str:
    return from_dockerfile("buildah", HACK / "images/buildah.Dockerfile", HACK / "images", [], pip_ca=False)


def conda_installer() -> str:
    """python + py-rattler + PyYAML: the stage conda builds solve and install in (no PyPI needed at build time)."""
    dockerfile = HACK / "images/conda-installer.Dockerfile"
    return from_dockerfile("conda-installer", dockerfile, HACK / "images", [dockerfile], pip_ca=True)


def buildkit_builder() -> str:
    """Rootless BuildKit: the binaries hack/build-buildkit.sh built, copied into a build context of their own."""
    binaries = Path(script_output(HACK / "build-buildkit.sh"))
    with tempfile.TemporaryDirectory(prefix="kenv-buildkit-") as context:
        for name in ("buildkitd", "buildctl", "rootlesskit", "buildctl-daemonless.sh"):
            (Path(context) / name).write_bytes((binaries / name).read_bytes())
            (Path(context) / name).chmod(0o755)
        return from_dockerfile("buildkit", HACK / "images/buildkit.Dockerfile", Path(context), [binaries],
                               pip_ca=False)


def floor_webhook() -> str:
    """bench/webhook.py's floor: a minimal mutating webhook in Go (standard library only), FROM scratch."""
    source = ROOT / "bench/floorwebhook"
    go_version = subprocess.run(["go", "version"], check=True, capture_output=True, text=True).stdout
    ref = f"localhost/{REPOSITORIES['floor-webhook']}:{digest_of(source, go_version)}"
    if not have_local(ref):
        log(f"building {ref}")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "floor-webhook"
            subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."], cwd=source,
                           check=True, env={**os.environ, "CGO_ENABLED": "0"})
            from_scratch(ref, {"/floor-webhook": binary}, ["--entrypoint", '["/floor-webhook"]',
                                                           "--user", "65534:65534"], {"/floor-webhook": 0o755})
    return ref


BUILDERS: dict[str, Callable[[], str]] = {"pause": pause, "kaniko": kaniko, "base": base, "operator": operator,
                                          "buildah": buildah_builder, "buildkit": buildkit_builder,
                                          "conda-installer": conda_installer, "floor-webhook": floor_webhook}


# -- the registry ---------------------------------------------------------------------------------------------

def in_registry(registry: str, repository: str, tag: str) -> bool:
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10):
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


def push(local_ref: str, registry: str, tag: str | None = None) -> str:
    """Push localhost/REPO:TAG as REGISTRY/REPO:TAG (or another tag) unless the registry has it already."""
    repository, _, local_tag = local_ref.removeprefix("localhost/").rpartition(":")
    remote = f"{registry}/{repository}:{tag or local_tag}"
    if not in_registry(registry, repository, tag or local_tag):
        buildah("push", "--quiet", "--tls-verify=false", local_ref, f"docker://{remote}")
    return remote


def local_images() -> list[tuple[str, str]]:
    """(name:tag, image id) of every image in buildah's local storage."""
    listing = buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.ID}}").splitlines()
    return [(line.split()[0], line.split()[1]) for line in listing if line.strip()]


def prune_older(ref: str) -> None:
    """Drop the other tags of ref's repository: every input change would otherwise keep one more full copy."""
    repository = ref.rpartition(":")[0]
    stale = [name for name, _ in local_images() if name.rpartition(":")[0] == repository and name != ref]
    if stale:
        subprocess.run([*BUILDAH, "rmi", *stale], capture_output=True)


def remove_pushed_copies(registry: str) -> None:
    """Images a test or a tool left in local storage under a registry's name (e.g. `kenv build`), and dangling
    ones, so that buildah's storage does not grow with every cluster."""
    names = [name for name, _ in local_images() if name.startswith(f"{registry}/")]
    if names:
        subprocess.run([*BUILDAH, "rmi", "--force", *names], capture_output=True)
    subprocess.run([*BUILDAH, "rmi", "--prune"], capture_output=True)


def build(names: list[str], registry: str | None = None) -> dict[str, str]:
    """Build (if needed) and, with a registry, push each named image; returns name -> reference."""
    refs = {}
    for name in names:
        local = BUILDERS[name]()
        prune_older(local)
        # The base keeps the tag the examples and docs name; everything else is addressed by content.
        refs[name] = push(local, registry, f"3.11-{DEBIAN_SUITE}" if name == "base" else None) if registry else local
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("names", nargs="+", choices=sorted(BUILDERS))
    parser.add_argument("--push", metavar="REGISTRY", help="host:port of a plain-HTTP registry to push to")
    args = parser.parse_args(argv)
    for ref in build(args.names, args.push).values():
        print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
