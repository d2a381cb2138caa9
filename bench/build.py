"""A real pip Environment end to end vs. a plain `buildah bud` + push of the same context, and a one-package edit.

    python bench/build.py [--rounds 2] [--kaniko EXECUTOR]

Starts its own stack (bench/stack.py) and, in one run:
  (a) applies an Environment (the stack's base image, pip `six==1.16.0`, build.caBundle from a ConfigMap holding
      /etc/ssl/certs/ca-certificates.crt) and times it from the POST to Ready: operator reconcile, registry lookup,
      build Job, the build itself (pip through the network), push, digest read back, status written;
  (b) renders the same context with kenv.render.render_context (what `kenv render --ca-bundle` writes) and times
      a plain `buildah bud` + `buildah push` of it to the same registry, with the flags the fakelet uses;
      prints both times and the ratio (target ≤ 1.2); --rounds repeats (a) and (b) in ABBA order (a later (a)
      is a new Environment of the same content with a kenv.dev/rebuild token, which forces its build);
  (c) applies a second Environment that differs only by one pip package (`idna==3.7`), times it, and shows which
      build steps were reused (buildah: "Using cache" in the build log; Kaniko: "Using caching version of cmd")
      and which image layers it shares with (a)'s image in the registry.
The base image is pulled into local storage first and one plain build of the same context runs (both untimed),
so neither (a) nor (b) pays for the pull or for being the run's first build.

Build pods run on the fakelet's buildah path by default (hack/fakelet.py: `buildah bud --isolation chroot` on the
host, vfs storage). That path keeps no layer cache between builds: `buildah bud` runs without --layers, and the
fakelet's `buildah rmi` after each push also removes the intermediate images that BUILDAH_LAYERS=true would keep
(checked: with it, (c) still reuses 0 of 9 steps). Reuse there is the registry's only (the base image's layer).
--kaniko runs the build pods with the real Kaniko executor (hack/build-kaniko.sh builds one), whose cache repo
(--cache-repo, on by default) is what reuses layers on a cluster.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
from kenv.models import EnvironmentSpec  # noqa: E402
from kenv.render import Externals, render_context  # noqa: E402
from stack import Stack  # noqa: E402

CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
TARGET_RATIO = 1.2
BUILDAH = ["buildah", "--storage-driver", "vfs"]  # as hack/fakelet.py runs it
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def pip_spec(base_image: str, requirements: str) -> dict[str, Any]:
    return {"docker": {"baseImage": base_image}, "pip": {"requirements": requirements},
            "build": {"caBundle": {"name": "kenv-ca", "key": "ca.crt"}}}


def timed_environment(stack: Stack, name: str, spec: dict[str, Any],
                      annotations: dict[str, str] | None = None) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """(seconds from POST to Ready, the Environment, the fakelet's record of the build it requested)."""
    started = time.monotonic()
    stack.create_environment(name, spec, annotations)
    env = stack.wait_ready(name)
    seconds = time.monotonic() - started
    jobs = [j["metadata"]["name"] for j in stack.build_jobs(env["status"]["hash"])
            if j["metadata"]["annotations"]["kenv.dev/requested-by"].endswith(f"{stack.namespace}/{name}")]
    builds = [b for b in stack.fakelet.builds if any(b["pod"].startswith(job + "-") for job in jobs)]
    if len(jobs) != 1 or len(builds) != 1:
        raise RuntimeError(f"{name}: expected one build Job and one build, got {jobs} and {builds}")
    return seconds, env, builds[0]


def plain_build(registry: str, files: dict[str, str], tag: str) -> tuple[float, float, str]:
    """`buildah bud` + push of the rendered context; (bud+push seconds, rmi seconds, digest)."""
    destination = f"{registry}/bench/plain:{tag}"
    with tempfile.TemporaryDirectory(prefix="kenv-plain-") as tmp:
        context = Path(tmp, "context")
        for name, text in files.items():  # what `kenv render -o DIR` writes
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            (context / name).write_text(text)
        digest_file = Path(tmp, "digest")
        log_path = Path(tmp, "log")
        started = time.monotonic()
        with log_path.open("w") as log:
            for step in ([*BUILDAH, "bud", "--isolation", "chroot", "--tls-verify=false",
                          "-f", str(context / "Dockerfile"), "-t", destination, str(context)],
                         [*BUILDAH, "push", "--tls-verify=false", "--digestfile", str(digest_file), destination,
                          f"docker://{destination}"]):
                if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    log.flush()
                    raise RuntimeError(f"plain build failed: {' '.join(step)}\n{log_path.read_text()[-3000:]}")
        seconds = time.monotonic() - started
        started = time.monotonic()
        subprocess.run([*BUILDAH, "rmi", destination], capture_output=True)  # the fakelet does this too
        return seconds, time.monotonic() - started, digest_file.read_text().strip()


def build_steps(log: str, builder: str) -> list[tuple[str, bool]]:
    """(step, reused?) for each build step in a builder's log."""
    steps: list[tuple[str, bool]] = []
    if builder == "buildah":
        for line in log.splitlines():
            if match := re.match(r"^STEP \d+/\d+: (.*)$", line):
                steps.append((match.group(1), False))
            elif line.startswith("--> Using cache") and steps:
                steps[-1] = (steps[-1][0], True)
        return steps
    for line in log.splitlines():  # Kaniko, --log-format=text
        if match := re.search(r"Using caching version of cmd: (.*)$", line):
            steps.append((match.group(1), True))
        elif match := re.search(r"No cached layer found for cmd (.*)$", line):
            steps.append((match.group(1), False))
    return steps


def layers(registry: str, repository: str, reference: str) -> list[str]:
    response = httpx.get(f"http://{registry}/v2/{repository}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, trust_env=False, timeout=30)
    response.raise_for_status()
    return [layer["digest"] for layer in response.json()["layers"]]


def run(kaniko: str | None, rounds: int, warmup: bool) -> int:
    stack = Stack(max_parallel_builds=4, kaniko=kaniko).start()
    try:
        registry, base = stack.cluster.registry, stack.base_image
        builder = stack.builder
        print(f"build: builder of the build pods: {builder} "
              + ("(the fakelet's buildah path: `buildah bud --isolation chroot` on the host, vfs storage"
                 ", no layer cache kept between builds)"
                 if builder == "buildah" else f"(the real Kaniko executor {stack.fakelet.kaniko}, cache repo on)"))
        ca_text = CA_FILE.read_text()
        stack.kube.request("POST", f"/api/v1/namespaces/{stack.namespace}/configmaps",
                           {"metadata": {"name": "kenv-ca"}, "data": {"ca.crt": ca_text}})

        # Both (a) and (b) start from the base image in local storage: the first build would pay for its pull
        # (and vfs extraction) alone otherwise.
        pull = subprocess.run([*BUILDAH, "pull", "--tls-verify=false", base], capture_output=True, text=True)
        if pull.returncode != 0:
            raise RuntimeError(f"buildah pull {base}: {pull.stderr[-2000:]}")
        spec_a = pip_spec(base, "six==1.16.0\n")
        context = render_context(EnvironmentSpec.model_validate(spec_a), Externals(ca_bundle=ca_text))
        if warmup:  # the run's first build is slower whoever runs it (page cache, pip's first connections)
            seconds, _, _ = plain_build(registry, context.files, f"{context.tag}-warmup")
            print(f"warm-up: one plain build of the same context, not counted: {seconds:.1f} s")

        # (a) the operator, end to end, and (b) the same context built by hand; rounds in ABBA order (a b, b a,
        # a b...) so that a drift in the machine's load hits both alike. Later rounds force a build of the same
        # content with a kenv.dev/rebuild token on a new Environment.
        e2e: list[float] = []
        pods: list[float] = []
        plain: list[float] = []
        plain_rmi: list[float] = []
        for round_ in range(rounds):
            for part in ("ab" if round_ % 2 == 0 else "ba"):
                if part == "a":
                    name = "six" if round_ == 0 else f"six-{round_}"
                    annotations = {"kenv.dev/rebuild": f"bench-{round_}"} if round_ else None
                    seconds, env, build = timed_environment(stack, name, spec_a, annotations)
                    if round_ == 0:
                        env_a = env
                    if context.hash != env["status"]["hash"]:
                        raise RuntimeError(f"rendered hash {context.hash} != the operator's {env['status']['hash']}")
                    e2e.append(seconds)
                    pods.append(build["seconds"])
                    print(f"(a) round {round_ + 1}: Environment {name} (pip six==1.16.0, caBundle) applied -> Ready: "
                          f"{seconds:.1f} s; its build pod (the same buildah bud + push, then `buildah rmi`): "
                          f"{build['seconds']:.1f} s; the rest (operator, Job, scheduling, status): "
                          f"{seconds - build['seconds']:.1f} s")
                else:
                    seconds, rmi, _ = plain_build(registry, context.files, f"{context.tag}-{round_}")
                    plain.append(seconds)
                    plain_rmi.append(seconds + rmi)
                    print(f"(b) round {round_ + 1}: plain `buildah bud` + push of the same rendered context "
                          f"({', '.join(sorted(context.files))}; hash equal to (a)'s): {seconds:.1f} s "
                          f"(+ {rmi:.1f} s `buildah rmi`, not counted)")
        ratio = sum(e2e) / sum(plain)
        print(f"(a) {' '.join(f'{v:.1f}' for v in e2e)} s vs (b) {' '.join(f'{v:.1f}' for v in plain)} s: "
              f"ratio (a)/(b) = {ratio:.2f} (target ≤ {TARGET_RATIO}: "
              f"{'target met' if ratio <= TARGET_RATIO else 'missed'})")
        print(f"    like for like with the fakelet (which also runs `buildah rmi`): (a)/(b + rmi) = "
              f"{sum(e2e) / sum(plain_rmi):.2f}; build pod alone / (b + rmi) = {sum(pods) / sum(plain_rmi):.2f}")
        seconds_a = sum(e2e) / len(e2e)

        # (c) one more pip package
        seconds_c, env_c, build_c = timed_environment(stack, "six-idna", pip_spec(base, "six==1.16.0\nidna==3.7\n"))
        print(f"(c) Environment six-idna (+ idna==3.7) applied -> Ready: {seconds_c:.1f} s "
              f"(build pod {build_c['seconds']:.1f} s); {seconds_c / seconds_a:.2f}x (a)")
        log = stack.fakelet.log_path(build_c["namespace"], build_c["pod"]).read_text(errors="replace")
        steps = build_steps(log, builder)
        marker = "Using cache" if builder == "buildah" else "Using caching version of cmd"
        print(f"    build steps ({sum(r for _, r in steps)} of {len(steps)} reused, \"{marker}\" in "
              f"{stack.fakelet.log_path(build_c['namespace'], build_c['pod'])}):")
        for step, reused in steps:
            print(f"      {'reused ' if reused else 'rebuilt'}  {step[:100]}")
        base_repository, base_tag = base.split("/", 1)[1].rsplit(":", 1)
        base_layers = set(layers(registry, base_repository, base_tag))
        layers_a = set(layers(registry, "kenv/environments", env_a["status"]["digest"]))
        layers_c = layers(registry, "kenv/environments", env_c["status"]["digest"])
        shared = [d for d in layers_c if d in layers_a]
        print(f"    image layers: {len(layers_c)} in (c)'s image, {len(shared)} shared with (a)'s "
              f"({len([d for d in shared if d in base_layers])} of them the base image's), "
              f"{len(layers_c) - len(shared)} new")
    finally:
        stack.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaniko", default=None, help="run build pods with this Kaniko executor instead of buildah")
    parser.add_argument("--rounds", type=int, default=2, help="(a)/(b) pairs, in ABBA order")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up build")
    args = parser.parse_args()
    return run(args.kaniko, args.rounds, not args.no_warmup)


if __name__ == "__main__":
    sys.exit(main())
