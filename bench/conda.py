"""A conda Environment beside a pip Environment of the same packages, and the conda installer's own time.

    python bench/conda.py [--rounds 2] [--no-warmup]
    python bench/conda.py --host-only          # only the installer on this host: no cluster

First, on this host (no cluster): kenv's conda installer (operator/kenv/conda_installer.py, kenv-conda.py in build
contexts) run 5 times with this python on an environment.yml of the packages below, from the local channel over
file:// (hack/condachannel.py: Debian's python 3.11 repackaged, pip, and PyPI's pure-python wheels of requests and
friends converted to noarch: python packages), each run into a fresh prefix with a fresh rattler cache.

Then it starts its own stack (bench/stack.py: a real node, kenv by Helm), serves the channel on the node's bridge
address and, in one run, in ABBA order, --rounds pairs of:
  (a) a conda Environment: channels [the local channel, nodefaults], packages python=3.11 and requests, attrs,
      packaging, six, tqdm pinned (the channel holds one version of each of requests' dependencies);
  (b) a pip Environment of the same nine packages at the same versions, pinned, on the stack's base image
      (Debian's python 3.11): PyPI through the proxy, build.caBundle from a ConfigMap holding
      /etc/ssl/certs/ca-certificates.crt (pip takes charset-normalizer's compiled wheel there, conda its pure one).
Both set build.cache false (Kaniko neither reads nor writes a layer cache: cold builds) and each round's pair are
new Environments with a kenv.dev/rebuild token, so each builds although an image of its content exists already.
Per build: POST -> Ready, the Kaniko container's running time, the installer's solve+install time (its line
`kenv: conda environment ... in X s` in the build log) and the image's size (its compressed layers in the registry
manifest, and those beyond the base image's); then the medians and the conda/pip ratios. Figures, never verdicts.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
import condachannel  # noqa: E402
from condawheels import WHEELS  # noqa: E402
from nodeconfig import NODE_IP  # noqa: E402
from overhead import CA_FILE, MANIFEST_TYPES, container_seconds, timed_environment  # noqa: E402
from stack import GROUP_PATH, Stack  # noqa: E402

INSTALLER = ROOT / "operator/kenv/conda_installer.py"
INSTALLER_LINE = re.compile(r"kenv: conda environment \S+: (\d+) packages from .* in ([\d.]+) s")
PINS = [f"{name}=={version}" for name, version in WHEELS]
TOP_LEVEL = ("requests", "attrs", "packaging", "six", "tqdm")
CONDA_PACKAGES = ["python=3.11", *(pin for pin in PINS if pin.split("==")[0] in TOP_LEVEL)]
HOST_RUNS = 5


def installer_report(log: str) -> tuple[int, float] | None:
    """(packages, seconds) from the installer's `kenv: conda environment ...` line, if the log has it."""
    match = INSTALLER_LINE.search(log)
    return (int(match.group(1)), float(match.group(2))) if match else None


def host_installer(channel: Path) -> None:
    """The installer alone, HOST_RUNS times: wall time of the process and its own solve+install figure."""
    walls, own = [], []
    with tempfile.TemporaryDirectory(prefix="kenv-bench-conda-") as folder:
        environment = Path(folder) / "environment.yml"
        environment.write_text(yaml.safe_dump({"channels": [channel.as_uri()], "dependencies": CONDA_PACKAGES}))
        for run in range(HOST_RUNS):
            prefix = Path(folder) / f"env-{run}"
            started = time.monotonic()
            result = subprocess.run([sys.executable, str(INSTALLER), str(environment), str(prefix)],
                                    capture_output=True, text=True, timeout=600)
            walls.append(time.monotonic() - started)
            report = installer_report(result.stdout)
            if result.returncode or not report:
                raise RuntimeError(f"installer failed ({result.returncode}): {result.stderr[-2000:]}")
            own.append(report[1])
            if run == 0:  # the environment works: the channel's python imports what was installed
                check = "import requests, attrs, packaging, six, tqdm; print(requests.__version__)"
                subprocess.run([prefix / "bin/python", "-c", check], check=True, capture_output=True)
            shutil.rmtree(prefix)
    solves = []
    for _ in range(HOST_RUNS):  # the same solve without the install, by condachannel's rattler helper
        started = time.monotonic()
        if condachannel.rattler_install(channel.as_uri(), CONDA_PACKAGES, None).returncode:
            raise RuntimeError("the solve alone failed")
        solves.append(time.monotonic() - started)
    print(f"host: {INSTALLER.relative_to(ROOT)} with {sys.executable}, {' '.join(CONDA_PACKAGES)} from "
          f"{channel.as_uri()} ({report[0]} packages), a fresh prefix and rattler cache each run, {HOST_RUNS} runs:")
    print(f"    wall median {statistics.median(walls):.2f} s ({' '.join(f'{w:.2f}' for w in walls)}); the script's "
          f"own `in X s` median {statistics.median(own):.1f} s ({' '.join(f'{s:.1f}' for s in own)}): solve + "
          "install; the rest is the interpreter starting and importing rattler")
    print(f"    the solve alone (a process of this python: start, import rattler, repodata, solve, no install) "
          f"wall median {statistics.median(solves):.2f} s ({' '.join(f'{w:.2f}' for w in solves)})")


def image_bytes(registry: str, repository: str, reference: str) -> dict[str, int]:
    """{layer digest: compressed size} of an image's manifest in the (plain HTTP) registry."""
    response = httpx.get(f"http://{registry}/v2/{repository}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, trust_env=False, timeout=30)
    response.raise_for_status()
    return {layer["digest"]: int(layer["size"]) for layer in response.json()["layers"]}


def build_log(stack: Stack, env: dict[str, Any], pod: dict[str, Any]) -> str:
    """The build pod's log; the EnvironmentVersion's spec.buildLog (the log's end) if the pod's is unreadable."""
    try:
        return stack.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"])
    except OSError:  # urllib's HTTPError and URLError
        selector = f"kenv.dev%2Fenvironment-uid%3D{env['metadata']['uid']}"
        versions = stack.kube.request("GET", f"{GROUP_PATH}/environmentversions?labelSelector={selector}")["items"]
        return "\n".join(v["spec"].get("buildLog") or "" for v in versions)


def measure(stack: Stack, kind: str, round_: int, spec: dict[str, Any], base_layers: dict[str, int]) -> dict:
    name = f"{kind}-{round_ + 1}"
    seconds, env, pod = timed_environment(stack, name, spec, {"kenv.dev/rebuild": f"bench-{uuid.uuid4().hex[:8]}"})
    layers = image_bytes(stack.cluster.registry, "kenv/environments", env["status"]["digest"])
    result = {"ready": seconds, "container": container_seconds(pod), "image": sum(layers.values()) / 1e6,
              "added": sum(size for digest, size in layers.items() if digest not in base_layers) / 1e6}
    report = installer_report(build_log(stack, env, pod)) if kind == "conda" else None
    installer = f"; installer {report[1]:.1f} s for {report[0]} packages" if report else \
        ("; no installer line in the build log" if kind == "conda" else "")
    if report:
        result["installer"] = report[1]
    print(f"{'(a)' if kind == 'conda' else '(b)'} round {round_ + 1}: {kind} Environment {name} POST -> Ready "
          f"{seconds:.1f} s; Kaniko container {result['container']:.1f} s{installer}; image {result['image']:.1f} MB "
          f"({result['added']:.1f} MB beyond the base)")
    return result


def summary(results: dict[str, list[dict]]) -> None:
    heading = f"medians over {len(results['conda'])} rounds"
    print(f"{heading:<26}{'conda':>8}{'pip':>10}     conda/pip")
    for key, label, unit in (("ready", "POST -> Ready", "s"), ("container", "Kaniko container", "s"),
                             ("image", "image (compressed)", "MB"), ("added", "  beyond the base", "MB")):
        conda, pip = (statistics.median(r[key] for r in results[kind]) for kind in ("conda", "pip"))
        print(f"  {label:<24}{conda:>8.1f} {unit:<2}{pip:>7.1f} {unit:<2}  {conda / pip:.2f}")
    if times := [r["installer"] for r in results["conda"] if "installer" in r]:
        print(f"  {'installer (in the pod)':<24}{statistics.median(times):>8.1f} s   (solve + install, conda only)")


def run(args: argparse.Namespace) -> int:
    channel = condachannel.build()  # the Debian rootfs and PyPI's wheels, once; cached by input digest
    host_installer(channel)
    if args.host_only:
        return 0
    stack = Stack(max_parallel_builds=4).start()
    try:
        base = stack.base_image
        stack.kube.request("POST", f"/api/v1/namespaces/{stack.namespace}/configmaps",
                           {"metadata": {"name": "kenv-ca"}, "data": {"ca.crt": CA_FILE.read_text()}})
        base_repository, base_tag = base.split("/", 1)[1].rsplit(":", 1)
        base_layers = image_bytes(stack.cluster.registry, base_repository, base_tag)
        with condachannel.ChannelServer(channel, NODE_IP) as server:
            specs = {
                "conda": {"docker": {"baseImage": base}, "build": {"cache": False},
                          "conda": {"channels": [server.url, "nodefaults"], "packages": CONDA_PACKAGES}},
                "pip": {"docker": {"baseImage": base}, "pip": {"packages": PINS},
                        "build": {"cache": False, "caBundle": {"name": "kenv-ca", "key": "ca.crt"}}},
            }
            print(f"conda: Kaniko build pods ({stack.operator.images['kaniko']}), build.cache false on both (no "
                  f"Kaniko layer cache: cold builds), a new Environment and rebuild token per build; conda packages "
                  f"from {server.url} (this host), pip's from PyPI through the proxy")
            print(f"    (a) conda: {' '.join(CONDA_PACKAGES)}\n    (b) pip:   {' '.join(PINS)}")
            if not args.no_warmup:
                started = time.monotonic()
                stack.create_environment("warmup", {**specs["conda"], "conda": {
                    "channels": [server.url, "nodefaults"], "packages": ["kenv-hello"]}})
                stack.wait_ready("warmup")
                print(f"warm-up: a conda Environment of kenv-hello, not counted: {time.monotonic() - started:.1f} s")
            results: dict[str, list[dict]] = {"conda": [], "pip": []}
            for round_ in range(args.rounds):
                for kind in (("conda", "pip") if round_ % 2 == 0 else ("pip", "conda")):
                    results[kind].append(measure(stack, kind, round_, specs[kind], base_layers))
        summary(results)
    finally:
        stack.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-only", action="store_true", help="only the installer on this host: no cluster")
    parser.add_argument("--rounds", type=int, default=2, help="(a) conda / (b) pip pairs, in ABBA order")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed kenv-hello conda build first")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
