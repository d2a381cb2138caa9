"""Where one admission's time goes inside the operator process: kopf's admission path, kenv's lean path, their parts.

    python bench/admission_profile.py [--count 2000] [--profile]

No cluster: kenv's real handlers (kenv.main's registry) are served by kopf's own `serve_admission_request`, the
function kopf's webhook server calls for every AdmissionReview, and by the lean path the operator serves them on
(admission.review), with kenv's indexes filled as the watch would fill them (one Ready Environment with variables
and a secret). Prints the mean time per admission of each, each measured on its own in the same process:
  kopf's path            serve_admission_request, from the parsed review to the response dict (kenv's handler in
                         an executor thread, the patch applied to a copy of the pod and diffed back)
  lean path              admission.review(), from the parsed review to the response dict
  kenv's core            admission.admit(): the index lookup, the mutation, the metrics
  pod mutation           injection.build_pod_mutation() alone
  spec validation        EnvironmentSpec.model_validate(), now paid once per watch event instead of per pod
  JSON codec             json.loads + json.dumps of the review and the response (the server's share)
With --profile, cProfile's 20 costliest functions (cumulative) of serve_admission_request.
TLS and the HTTP server are not in here: bench/webhook.py measures them against a real API server.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "hack")]  # podload (beside this file) uses hack/kubeapi
os.environ.setdefault("KENV_DESTINATION_REPO", "registry.invalid/kenv/environments")

import kopf  # noqa: E402
from kopf._cogs.structs import references  # noqa: E402
from kopf._core.engines import indexing  # noqa: E402
from kopf._core.engines.admission import serve_admission_request  # noqa: E402
from kopf._core.reactor import inventory  # noqa: E402

from kenv import admission  # noqa: E402
from kenv.injection import InjectionSettings, build_pod_mutation  # noqa: E402
from kenv.main import registry as role_registry  # noqa: E402
from kenv.models import ENVIRONMENT_LABEL, EnvironmentSpec  # noqa: E402
from kenv.roles import Role  # noqa: E402
from podload import admission_review  # noqa: E402

NAMESPACE, NAME = "team-a", "bench"
IMAGE = "registry.invalid/kenv/environments@sha256:" + "0" * 64
SPEC = {"docker": {"baseImage": "python:3.11-slim"}, "python": {"userManagedDependencies": True},
        "environmentVariables": {"OMP_NUM_THREADS": "4", "HF_HOME": "/cache/hf"},
        "secretEnv": [{"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "key"}}]}
ENVIRONMENT = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
               "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": str(uuid.uuid4()), "generation": 1},
               "spec": SPEC,
               "status": {"phase": "Ready", "image": IMAGE, "version": 1, "observedGeneration": 1,
                          "hash": "0" * 64, "digest": "sha256:" + "0" * 64}}


class Harness:
    """kopf's admission entry point wired as kopf.operator() wires it, with the handlers of an admission replica."""

    def __init__(self) -> None:
        registry = role_registry(Role.ADMISSION)
        self.settings = kopf.OperatorSettings()
        self.indexers = indexing.OperatorIndexers()
        self.indexers.ensure(registry._indexing.get_all_handlers())
        body = kopf.Body(ENVIRONMENT)
        self.indexers["environments"].replace(self.indexers.make_key(body),
                                              {(NAMESPACE, NAME): admission.indexed(body)})
        insights = references.Insights()
        insights.webhook_resources.add(references.Resource(group="", version="v1", plural="pods", kind="Pod",
                                                           namespaced=True))
        self.kwargs = dict(settings=self.settings, memories=inventory.ResourceMemories(), memobase=kopf.Memo(),
                           registry=registry, insights=insights, indices=self.indexers.indices)

    async def serve(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(await serve_admission_request(request, webhook="inject-environment", **self.kwargs))

    def index(self, name: str) -> kopf.Index:
        return self.indexers.indices[name]


def mean_seconds(count: int, call: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


async def measure(count: int, profile: bool) -> dict[str, float]:
    harness = Harness()
    requests = [admission_review(NAMESPACE, {ENVIRONMENT_LABEL: NAME}) for _ in range(count)]
    first = await harness.serve(requests[0])
    if not first["response"]["allowed"] or "patch" not in first["response"]:
        raise SystemExit(f"the harness did not admit the pod: {first}")
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for request in requests:
        await harness.serve(request)
    if profiler:
        profiler.disable()
    dispatch = (time.perf_counter() - started) / count

    environments, versions = harness.index("environments"), harness.index("environment_versions")
    indexes = admission.Indexes(environments, harness.index("cluster_environments"), versions)
    pod = requests[0]["request"]["object"]
    view = admission.lookup("Environment", NAMESPACE, NAME, environments, versions)
    settings = InjectionSettings(pull_secret=None, pending_image_policy="gate")
    raw = json.dumps(requests[0]).encode()
    figures = {
        "kopf's path": dispatch,
        "lean path": mean_seconds(count, lambda: admission.review("inject-environment", requests[0], indexes)),
        "kenv's core": mean_seconds(count, lambda: admission.admit("Environment", pod, environments, versions)),
        "pod mutation": mean_seconds(count, lambda: build_pod_mutation(pod, view, settings)),
        "spec validation": mean_seconds(count, lambda: EnvironmentSpec.model_validate(SPEC)),
        "JSON codec": mean_seconds(count, lambda: json.dumps(first) and json.loads(raw)),
    }
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
    return figures


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.count, args.profile))
    print(f"admission inside the operator process, mean of {args.count} (python {sys.version.split()[0]}, "
          f"kopf {kopf.__version__ if hasattr(kopf, '__version__') else '?'}):")
    for layer, seconds in figures.items():
        print(f"  {layer:16s} {seconds * 1e3:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
