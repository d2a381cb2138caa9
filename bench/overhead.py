"""A real pip Environment end to end vs. a plain Kaniko Job of the same context, and a one-package edit.

    python bench/overhead.py [--rounds 2]

Starts its own stack (bench/stack.py: a real node, kenv by Helm) and, in one run:
  (a) applies an Environment (the stack's base image, pip `six==1.16.0`, build.caBundle from a ConfigMap holding
      /etc/ssl/certs/ca-certificates.crt) and times it from the POST to Ready: operator reconcile, registry lookup,
      build Job, the Kaniko pod (pip through the network), push, digest read back, status written;
  (b) renders the same context with kenv.render.render_context (what `kenv render --ca-bundle` writes) and times a
      plain Kaniko Job of it (the same executor image and flags, no operator) from its POST to Complete;
      prints both and the ratio; --rounds repeats (a) and (b) in ABBA order (a later (a) is a new Environment of
      the same content with a kenv.dev/rebuild token, which forces its build; each (b) pushes to its own tag and
      cache repository, so it never reuses (a)'s layers);
  (c) applies a second Environment that differs only by one pip package (`idna==3.7`), times it, and shows which
      build steps Kaniko reused ("Using caching version of cmd" in the build pod's log) and which image layers it
      shares with (a)'s image in the registry.
One untimed plain build runs first, so neither (a) nor (b) pays for being the run's first (image pulls, caches).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "hack")]
from kenv.logs import kaniko_steps  # noqa: E402
from kenv.models import EnvironmentSpec  # noqa: E402
from kenv.render import Externals, render_context  # noqa: E402
from stack import Stack  # noqa: E402

CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
TARGET_RATIO = 1.2
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def pip_spec(base_image: str, requirements: str) -> dict[str, Any]:
    return {"docker": {"baseImage": base_image}, "pip": {"requirements": requirements},
            "build": {"caBundle": {"name": "kenv-ca", "key": "ca.crt"}}}


def container_seconds(pod: dict[str, Any]) -> float:
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    parse = dt.datetime.fromisoformat
    return (parse(state["finishedAt"]) - parse(state["startedAt"])).total_seconds()


def job_pod(stack: Stack, namespace: str, job: str) -> dict[str, Any]:
    pods = stack.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{job}")["items"]
    if len(pods) != 1:
        raise RuntimeError(f"Job {namespace}/{job}: expected one pod, found {len(pods)}")
    return dict(pods[0])


def timed_environment(stack: Stack, name: str, spec: dict[str, Any],
                      annotations: dict[str, str] | None = None) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """(seconds from POST to Ready, the Environment, its build pod)."""
    started = time.monotonic()
    stack.create_environment(name, spec, annotations)
    env = stack.wait_ready(name)
    seconds = time.monotonic() - started
    job = env["status"]["buildJob"]
    return seconds, env, job_pod(stack, job["namespace"], job["name"])


def plain_kaniko_job(stack: Stack, files: dict[str, str], tag: str, cache: str | None = None
                     ) -> tuple[float, dict[str, Any]]:
    """A Kaniko Job of the rendered context, shaped like the operator's (context ConfigMap one level down, digest
    file, cache on) but to its own tag and cache repository (`bench/<cache>`, default: one per tag); (seconds from
    POST to Complete, its pod)."""
    namespace, registry = stack.namespace, stack.cluster.registry
    name = f"plain-{uuid.uuid4().hex[:8]}"
    stack.kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                       {"metadata": {"name": name}, "data": files})
    args = ["--context=dir:///workspace/context", "--dockerfile=/workspace/context/Dockerfile",
            f"--destination={registry}/bench/plain:{tag}", "--digest-file=/dev/termination-log", "--cache=true",
            f"--cache-repo={registry}/bench/{cache or 'plain-cache-' + tag}", "--log-format=text",
            f"--insecure-registry={registry}"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"backoffLimit": 0,
           "template": {"spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [
               {"name": "build", "image": stack.operator.images["kaniko"], "args": args,
                "env": [{"name": "SSL_CERT_DIR", "value": "/kaniko/ssl/certs:/kenv/ca"}],
                "volumeMounts": [{"name": "context", "mountPath": "/workspace", "readOnly": True},
                                 {"name": "ca", "mountPath": "/kenv/ca", "readOnly": True}]}],
               "volumes": [{"name": "context", "configMap": {"name": name, "items": [
                   {"key": key, "path": f"context/{key}"} for key in sorted(files)]}},
                   {"name": "ca", "configMap": {"name": name, "items": [{"key": "kenv-ca.crt", "path": "ca.crt"}]}}]}}}}
    started = time.monotonic()
    stack.kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    while True:
        status = stack.kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}").get("status", {})
        finished = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
        if "Complete" in finished:
            return time.monotonic() - started, job_pod(stack, namespace, name)
        if "Failed" in finished:
            log = stack.pod_log(namespace, job_pod(stack, namespace, name)["metadata"]["name"])
            raise RuntimeError(f"plain Kaniko Job {name} failed: {status}\n{log[-3000:]}")
        time.sleep(0.2)


def layers(registry: str, repository: str, reference: str) -> list[str]:
    response = httpx.get(f"http://{registry}/v2/{repository}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, trust_env=False, timeout=30)
    response.raise_for_status()
    return [layer["digest"] for layer in response.json()["layers"]]


def run(rounds: int, warmup: bool) -> int:
    stack = Stack(max_parallel_builds=4).start()
    try:
        registry, base = stack.cluster.registry, stack.base_image
        print(f"build: Kaniko build pods ({stack.operator.images['kaniko']}) on the local node, cache repo on")
        ca_text = CA_FILE.read_text()
        stack.kube.request("POST", f"/api/v1/namespaces/{stack.namespace}/configmaps",
                           {"metadata": {"name": "kenv-ca"}, "data": {"ca.crt": ca_text}})
        spec_a = pip_spec(base, "six==1.16.0\n")
        context = render_context(EnvironmentSpec.model_validate(spec_a), Externals(ca_bundle=ca_text))
        files = dict(context.files) | {"kenv-ca.crt": ca_text}
        if warmup:
            seconds, _ = plain_kaniko_job(stack, files, f"{context.tag}-warmup")
            print(f"warm-up: one plain Kaniko Job of the same context, not counted: {seconds:.1f} s")

        e2e: list[float] = []
        pods: list[float] = []
        plain: list[float] = []
        for round_ in range(rounds):
            for part in ("ab" if round_ % 2 == 0 else "ba"):
                if part == "a":
                    name = "six" if round_ == 0 else f"six-{round_}"
                    annotations = {"kenv.dev/rebuild": f"bench-{round_}"} if round_ else None
                    seconds, env, pod = timed_environment(stack, name, spec_a, annotations)
                    if round_ == 0:
                        env_a = env
                    if context.hash != env["status"]["hash"]:
                        raise RuntimeError(f"rendered hash {context.hash} != the operator's {env['status']['hash']}")
                    e2e.append(seconds)
                    pods.append(container_seconds(pod))
                    print(f"(a) round {round_ + 1}: Environment {name} (pip six==1.16.0, caBundle) applied -> Ready: "
                          f"{seconds:.1f} s; its Kaniko container ran {pods[-1]:.1f} s; the rest (operator, Job, "
                          f"pod start, status): {seconds - pods[-1]:.1f} s")
                else:
                    seconds, pod = plain_kaniko_job(stack, files, f"{context.tag}-{round_}")
                    plain.append(seconds)
                    print(f"(b) round {round_ + 1}: plain Kaniko Job of the same rendered context "
                          f"({', '.join(sorted(context.files))}): {seconds:.1f} s "
                          f"(container {container_seconds(pod):.1f} s)")
        ratio = sum(e2e) / sum(plain)
        print(f"(a) {' '.join(f'{v:.1f}' for v in e2e)} s vs (b) {' '.join(f'{v:.1f}' for v in plain)} s: "
              f"ratio (a)/(b) = {ratio:.2f} (target ≤ {TARGET_RATIO}: "
              f"{'target met' if ratio <= TARGET_RATIO else 'missed'})")
        seconds_a = sum(e2e) / len(e2e)

        seconds_c, env_c, pod_c = timed_environment(stack, "six-idna", pip_spec(base, "six==1.16.0\nidna==3.7\n"))
        print(f"(c) Environment six-idna (+ idna==3.7) applied -> Ready: {seconds_c:.1f} s "
              f"(Kaniko container {container_seconds(pod_c):.1f} s); {seconds_c / seconds_a:.2f}x (a)")
        log = stack.pod_log(pod_c["metadata"]["namespace"], pod_c["metadata"]["name"])
        steps = kaniko_steps(log)
        print(f"    build steps ({sum(r for _, r in steps)} of {len(steps)} reused, \"Using caching version of "
              f"cmd\" in the build pod's log):")
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
    parser.add_argument("--rounds", type=int, default=2, help="(a)/(b) pairs, in ABBA order")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up build")
    args = parser.parse_args()
    return run(args.rounds, not args.no_warmup)


if __name__ == "__main__":
    sys.exit(main())
