"""The reconciler's incremental path: which Job an Environment follows and which image it ends Ready with. Jobs
live in an in-memory Job API, versions in test_version_store's EnvironmentVersion API, images in test_oci's
in-memory registry behind the real registry client. tests/integration/test_incremental.py runs it for real."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from typing import Any

import httpx
import pytest
from test_oci import HOST, LOCK, REPOSITORY, Registry, client
from test_version_store import VersionApi

from kenv import builds, incremental, kube, versions
from kenv.config import OperatorSettings
from kenv.models import EnvironmentSpec
from kenv.reconcile import REBUILD_ANNOTATION, Reconciler
from kenv.refs import EnvironmentRef
from kenv.render import render_context

REPO = f"{HOST}/{REPOSITORY}"
SETTINGS = OperatorSettings(destination_repo=REPO, insecure_registries=HOST, build_namespace="kenv-system",
                            operator_image=f"{HOST}/kenv/operator:1")
LOG = logging.getLogger("test")
WHY = "the conda update changed files pip installed (numpy-1.26.4)"  # what kenv-delta.py said last
V1 = {"build": {"incremental": True}, "pip": {"requirements": "six==1.16.0\n"}}
V2 = {"build": {"incremental": True}, "pip": {"requirements": "six==1.16.0\nidna==3.7\n"}}


class DigestRegistry(Registry):
    """test_oci's registry, answering manifest reads with their digest as a registry does."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        response = super().handle(request)
        kind, _, reference = request.url.path.rpartition("/")
        if kind.endswith("/manifests") and response.status_code == 200 and reference in self.manifests:
            _, data = self.manifests[reference]
            response.headers["Docker-Content-Digest"] = f"sha256:{hashlib.sha256(data).hexdigest()}"
        return response

    def push(self, tag: str) -> str:
        """A new image under `tag` (its lock names the tag, so each is another image); its digest."""
        lock = json.loads(LOCK)
        lock["packages"].append({"name": tag.lower(), "version": "1", "manager": "pip"})
        digest = self.image(json.dumps(lock).encode()).rpartition("@")[2]
        self.manifests[tag] = self.manifests[digest]
        return digest


class JobApi:
    """Jobs (and the objects created beside them) with their pods' outcome, as the reconciler reads them."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.pushed: dict[str, str] = {}  # Job name -> the digest its pod reports
        self.failed: set[str] = set()  # Jobs whose install container failed

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        key, _, value = selector.partition("=")
        return [copy.deepcopy(j) for j in self.jobs.values() if j["metadata"]["labels"].get(key) == value]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        if obj["kind"] == "Job":
            obj = {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{len(self.created)}"}, "status": {}}
            self.jobs[obj["metadata"]["name"]] = obj
        return obj

    async def set_owner(self, kind: str, namespace: str, name: str, owner: dict[str, Any]) -> None:
        return None

    async def job_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        failed = name in self.failed
        terminated = {"exitCode": 0, "message": self.pushed.get(name, "")}
        install = {"exitCode": 1 if failed else 0, "reason": "Error" if failed else "Completed"}
        incremental = self.jobs[name]["metadata"]["annotations"].get("kenv.dev/builder") == "incremental"
        return [{"metadata": {"name": f"{name}-pod"},
                 "spec": {"initContainers": [{"name": "install"}] if incremental else [],
                          "containers": [{"name": "build"}]},
                 "status": {"initContainerStatuses": [{"name": "install", "state": {"terminated": install}}],
                            "containerStatuses": [{"name": "build", "state": {"terminated": terminated}}]}}]

    async def pod_log_tail(self, namespace: str, pod: str, lines: int, container: str | None = None) -> str:
        if container == "install" and pod.removesuffix("-pod") in self.failed:
            return f"Collecting numpy\nkenv: {WHY}; a full build follows\n"
        return f"{container or 'build'}: done\n"

    def fail(self, name: str) -> None:
        self.jobs[name]["status"] = {"conditions": [{"type": "Failed", "status": "True",
                                                     "reason": "BackoffLimitExceeded"}]}
        self.failed.add(name)

    def finish(self, name: str, digest: str) -> None:
        self.jobs[name]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        self.pushed[name] = digest


@pytest.fixture
def world(monkeypatch):
    jobs, version_api = JobApi(), VersionApi()
    for name in ("read_job", "list_jobs", "create", "set_owner", "job_pods", "pod_log_tail"):
        monkeypatch.setattr(kube, name, getattr(jobs, name))

    async def custom() -> VersionApi:
        return version_api

    monkeypatch.setattr(kube, "custom", custom)
    return jobs, version_api, DigestRegistry(referrers_api=True)


class Environment:
    """One Environment's body, its status kept as kopf would patch it; version 1 Ready with a full build."""

    def __init__(self, name: str, reconciler: Reconciler, registry: DigestRegistry) -> None:
        self.ref = EnvironmentRef(kind="Environment", namespace="team", name=name)
        self.reconciler = reconciler
        self.body: dict[str, Any] = {"metadata": {"uid": f"uid-{name}", "generation": 1, "annotations": {}},
                                     "spec": copy.deepcopy(V1), "status": {}}
        full = builds.plan_build(render_context(EnvironmentSpec.model_validate(V1)), SETTINGS)
        registry.push(full.destination.rpartition(":")[2])

    async def reconcile(self) -> dict[str, Any]:
        outcome = await self.reconciler.reconcile(self.ref, copy.deepcopy(self.body), LOG)
        self.body["status"] = {k: v for k, v in {**self.body["status"], **outcome.status}.items() if v is not None}
        return self.body["status"]

    def edit(self, spec: dict[str, Any]) -> None:
        self.body["spec"] = copy.deepcopy(spec)
        self.body["metadata"]["generation"] += 1


def job_of(jobs: JobApi, status: dict[str, Any]) -> dict[str, Any]:
    return jobs.jobs[status["buildJob"]["name"]]


def destination(job: dict[str, Any]) -> str:
    return str(job["metadata"]["annotations"][builds.ANNOTATION_DESTINATION])


def run(world, scenario) -> None:
    jobs, version_api, registry = world

    async def main() -> None:
        made = client(registry)
        try:
            await scenario(jobs, version_api, registry, Reconciler(SETTINGS, made, version_index={}))
        finally:
            await made.close()
    asyncio.run(main())


def test_an_incremental_build_ends_in_its_own_image_even_if_a_full_build_is_pushed_meanwhile(world):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        env = Environment("train", reconciler, registry)
        first = await env.reconcile()
        assert first["phase"] == "Ready" and first["version"] == 1 and not jobs.jobs  # version 1 was in the registry
        env.edit(V2)
        building = await env.reconcile()
        job = job_of(jobs, building)
        assert building["phase"] == "Building" and job["metadata"]["annotations"]["kenv.dev/builder"] == "incremental"
        assert destination(job).endswith("-on-" + first["digest"].removeprefix("sha256:")[:12])
        full = builds.plan_build(render_context(EnvironmentSpec.model_validate(V2)), SETTINGS)
        registry.push(full.destination.rpartition(":")[2])  # e.g. `kenv build --push` of the same content
        assert (await env.reconcile())["buildJob"] == building["buildJob"]
        digest = registry.push(destination(job).rpartition(":")[2])
        jobs.finish(job["metadata"]["name"], digest)
        ready = await env.reconcile()
        assert ready["phase"] == "Ready" and ready["image"] == f"{REPO}@{digest}" and ready["version"] == 2
        assert [c["reason"] for c in ready["conditions"] if c["type"] == "Ready"] == ["IncrementalBuild"]
        recorded = {o["spec"]["version"]: o for o in version_api.objects.values()}
        assert recorded[2]["spec"]["image"] == f"{REPO}@{digest}"
        assert len(jobs.jobs) == 1
    run(world, scenario)


def test_an_environment_of_the_same_content_without_incremental_never_follows_the_incremental_job(world):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        incremental_env, plain = Environment("fast", reconciler, registry), Environment("plain", reconciler, registry)
        for env in (incremental_env, plain):
            await env.reconcile()
        incremental_env.edit(V2)
        increment = job_of(jobs, await incremental_env.reconcile())
        plain.edit({**V2, "build": {"incremental": False}})
        full = job_of(jobs, await plain.reconcile())
        assert full is not increment and "-on-" not in destination(full)
        assert full["metadata"]["annotations"]["kenv.dev/builder"] == "kaniko"
        assert full["metadata"]["labels"][builds.LABEL_HASH] == increment["metadata"]["labels"][builds.LABEL_HASH]
        jobs.finish(increment["metadata"]["name"], registry.push(destination(increment).rpartition(":")[2]))
        still = await plain.reconcile()  # the increment finishing is none of its business
        assert still["phase"] == "Building" and still["buildJob"]["name"] == full["metadata"]["name"]
        jobs.finish(full["metadata"]["name"], registry.push(destination(full).rpartition(":")[2]))
        ready = await plain.reconcile()
        assert ready["phase"] == "Ready" and ready["image"].partition("@")[2] == jobs.pushed[full["metadata"]["name"]]
    run(world, scenario)


@pytest.mark.parametrize("change", ["rebuild token", "incremental turned off"])
def test_a_rebuild_token_or_turning_incremental_off_mid_build_starts_a_full_build(world, change):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        env = Environment("train", reconciler, registry)
        await env.reconcile()
        env.edit(V2)
        increment = job_of(jobs, await env.reconcile())
        if change == "rebuild token":
            env.body["metadata"]["annotations"][REBUILD_ANNOTATION] = "now"
        else:
            env.edit({**V2, "build": {"incremental": False}})
        full = job_of(jobs, await env.reconcile())
        assert full is not increment and "-on-" not in destination(full)
        jobs.finish(increment["metadata"]["name"], registry.push(destination(increment).rpartition(":")[2]))
        assert (await env.reconcile())["buildJob"]["name"] == full["metadata"]["name"]
        digest = registry.push(destination(full).rpartition(":")[2])
        jobs.finish(full["metadata"]["name"], digest)
        ready = await env.reconcile()
        assert ready["phase"] == "Ready" and ready["image"] == f"{REPO}@{digest}"
        assert ready["version"] == 2 and versions.object_name(env.ref, 2) in {n for _, n in version_api.objects}
    run(world, scenario)


def test_turning_incremental_on_mid_build_keeps_the_full_build_in_flight(world):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        env = Environment("train", reconciler, registry)
        await env.reconcile()
        env.edit({**V2, "build": {"incremental": False}})
        full = job_of(jobs, await env.reconcile())
        env.edit(V2)
        assert (await env.reconcile())["buildJob"]["name"] == full["metadata"]["name"] and len(jobs.jobs) == 1
        digest = registry.push(destination(full).rpartition(":")[2])
        jobs.finish(full["metadata"]["name"], digest)
        ready = await env.reconcile()
        assert ready["phase"] == "Ready" and ready["image"] == f"{REPO}@{digest}"
        assert [c["reason"] for c in ready["conditions"] if c["type"] == "Ready"] == ["BuildSucceeded"]
    run(world, scenario)


def test_a_failed_incremental_build_is_followed_at_once_by_a_full_build_which_decides(world):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        env = Environment("train", reconciler, registry)
        await env.reconcile()
        env.edit(V2)
        increment = job_of(jobs, await env.reconcile())
        jobs.fail(increment["metadata"]["name"])
        outcome = await reconciler.reconcile(env.ref, copy.deepcopy(env.body), LOG)
        # a poll and a build-watch nudge may both see the failure before the status lands: announced once
        raced = await reconciler.reconcile(env.ref, copy.deepcopy(env.body), LOG)
        assert raced.status["buildJob"] == outcome.status["buildJob"] and not raced.events
        env.body["status"] = {k: v for k, v in {**env.body["status"], **outcome.status}.items() if v is not None}
        building = env.body["status"]
        full = job_of(jobs, building)
        assert building["phase"] == "Building" and "-on-" not in destination(full)
        assert full["metadata"]["annotations"]["kenv.dev/builder"] == "kaniko"
        assert building["incrementalFailed"] == building["desiredHash"]  # the content, built in full from now
        assert [reason for _, reason, _ in outcome.events] == ["IncrementalBuildFailed", "BuildStarted"]
        assert outcome.events[0][2] == (f"incremental build Job {increment['metadata']['name']} failed: {WHY}; "
                                        "a full build follows")
        # later reconciles follow the full build and never plan the increment again
        assert (await env.reconcile())["buildJob"] == building["buildJob"]
        digest = registry.push(destination(full).rpartition(":")[2])
        jobs.finish(full["metadata"]["name"], digest)
        ready = await env.reconcile()
        assert ready["phase"] == "Ready" and ready["image"] == f"{REPO}@{digest}" and ready["version"] == 2
        assert [c["reason"] for c in ready["conditions"] if c["type"] == "Ready"] == ["BuildSucceeded"]
        assert len(jobs.jobs) == 2
    run(world, scenario)


def test_a_long_chain_of_incremental_versions_is_flattened_by_a_full_build(world):
    def with_packages(count: int, **extra: Any) -> dict[str, Any]:
        lines = ["six==1.16.0", *[f"pkg{index}==1.0" for index in range(count)]]
        return {"build": {"incremental": True}, "pip": {"requirements": "\n".join(lines) + "\n"}, **extra}

    async def built(jobs: JobApi, registry: DigestRegistry, env: Environment) -> tuple[str, dict[str, Any]]:
        """The edit's build, finished: (its builder, the Ready status)."""
        job = job_of(jobs, await env.reconcile())
        jobs.finish(job["metadata"]["name"], registry.push(destination(job).rpartition(":")[2]))
        return job["metadata"]["annotations"]["kenv.dev/builder"], await env.reconcile()

    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        env = Environment("train", reconciler, registry)
        await env.reconcile()
        for count in range(1, incremental.MAX_CHAIN + 1):
            env.edit(with_packages(count))
            builder, ready = await built(jobs, registry, env)
            assert builder == "incremental" and ready["phase"] == "Ready", (count, ready)
            if count == 3:  # a version of the same image (a variable changed) neither counts nor ends the chain
                env.edit(with_packages(count, environmentVariables={"SEED": "1"}))
                same = await env.reconcile()
                assert same["image"] == ready["image"] and same["version"] == ready["version"] + 1
        env.edit(with_packages(incremental.MAX_CHAIN + 1))
        builder, flattened = await built(jobs, registry, env)
        assert builder == "kaniko"
        assert [c["reason"] for c in flattened["conditions"] if c["type"] == "Ready"] == ["BuildSucceeded"]
        env.edit(with_packages(incremental.MAX_CHAIN + 2))  # on the full build, incremental again
        builder, _ = await built(jobs, registry, env)
        assert builder == "incremental"
    run(world, scenario)


def test_an_increment_another_environment_built_is_found_and_recorded_as_a_link_of_the_chain(world):
    async def scenario(jobs: JobApi, version_api: VersionApi, registry: DigestRegistry, reconciler: Reconciler):
        first, twin = Environment("first", reconciler, registry), Environment("twin", reconciler, registry)
        for env in (first, twin):
            await env.reconcile()
        first.edit(V2)
        job = job_of(jobs, await first.reconcile())
        jobs.finish(job["metadata"]["name"], registry.push(destination(job).rpartition(":")[2]))
        built = await first.reconcile()
        twin.edit(V2)  # the same edit on the same image: its increment is in the registry already
        found = await twin.reconcile()
        assert found["phase"] == "Ready" and found["image"] == built["image"] and len(jobs.jobs) == 1
        assert [c["reason"] for c in found["conditions"] if c["type"] == "Ready"] == ["IncrementalImageFound"]
        kept = [versions.Snapshot.from_object(o) for o in version_api.objects.values()
                if o["spec"]["environment"]["name"] == "twin"]
        assert incremental.chain_depth(kept, found["version"]) == 1
    run(world, scenario)
