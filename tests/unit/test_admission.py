"""The lean admission path (admission.review) against kopf's own admission path with kenv's handlers.

kopf's `serve_admission_request` is the function kopf's webhook server calls per AdmissionReview; here it runs
kenv.main's real handlers over real kopf indexes, and the lean path must give the same pod, warnings and refusals.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import uuid
from typing import Any

import jsonpatch
import pytest

ENV_IMAGE = "registry.example/kenv/environments@sha256:" + "a" * 64
READY = {"phase": "Ready", "image": ENV_IMAGE, "version": 1, "observedGeneration": 1}
BUILDING = {"phase": "Building", "version": 1, "image": ENV_IMAGE, "observedGeneration": 1}


@pytest.fixture
def kenv_main(operator_settings: None) -> Any:
    """kenv.main imported (its handlers are registered per role by kenv.main.registry)."""
    import kenv.main
    from kenv import gating

    yield kenv.main
    gating._awaiting.clear()  # gated admissions are remembered process-wide


class Admission:
    """kenv.main's handlers as kopf serves them, and the same indexes for the lean path."""

    def __init__(self) -> None:
        import kopf
        from kopf._cogs.structs import references
        from kopf._core.engines import indexing
        from kopf._core.reactor import inventory

        from kenv import admission

        self.admission = admission
        from kenv.main import registry as role_registry
        from kenv.roles import Role

        registry = role_registry(Role.ADMISSION)
        self.indexers = indexing.OperatorIndexers()
        self.indexers.ensure(registry._indexing.get_all_handlers())
        insights = references.Insights()
        insights.webhook_resources.add(references.Resource(group="", version="v1", plural="pods", kind="Pod",
                                                           namespaced=True))
        self.kopf_kwargs = dict(settings=kopf.OperatorSettings(), memories=inventory.ResourceMemories(),
                                memobase=kopf.Memo(), registry=registry, insights=insights,
                                indices=self.indexers.indices)
        indices = self.indexers.indices
        self.indexes = admission.Indexes(indices["environments"], indices["cluster_environments"],
                                         indices["environment_versions"])

    def add_environment(self, name: str, spec: dict[str, Any], status: dict[str, Any],
                        namespace: str | None = "team-a") -> None:
        """An Environment, or with namespace None a ClusterEnvironment, as the watch would index it."""
        import kopf

        kind = "Environment" if namespace else "ClusterEnvironment"
        metadata = {"name": name, "uid": str(uuid.uuid4()), "generation": 1} | ({"namespace": namespace}
                                                                               if namespace else {})
        body = kopf.Body({"apiVersion": "kenv.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec,
                          "status": status})
        index, key = ("environments", (namespace, name)) if namespace else ("cluster_environments", name)
        self.indexers[index].replace(self.indexers.make_key(body), {key: self.admission.indexed(body)})

    def via_kopf(self, request: dict[str, Any], webhook: str = "inject-environment") -> dict[str, Any]:
        from kopf._core.engines.admission import serve_admission_request

        return dict(asyncio.run(serve_admission_request(copy.deepcopy(request), webhook=webhook,
                                                        **self.kopf_kwargs))["response"])

    def via_lean_path(self, request: dict[str, Any], webhook: str = "inject-environment") -> dict[str, Any]:
        return dict(self.admission.review(webhook, copy.deepcopy(request), self.indexes)["response"])


def review(pod: dict[str, Any], operation: str = "CREATE", dry_run: bool = False) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "team-a",
                        "operation": operation, "object": pod, "dryRun": dry_run,
                        "userInfo": {"username": "alice", "groups": []}}}


def pod(labels: dict[str, str], **container: Any) -> dict[str, Any]:
    main = {"name": "train", "image": "placeholder", "command": ["python", "train.py"]} | container
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a", "labels": labels},
            "spec": {"containers": [main]}}


def admitted_pod(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"], response
    ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    return dict(jsonpatch.apply_patch(request["request"]["object"], ops))


@pytest.mark.parametrize("case", ["injected", "gated", "clash", "cluster"])
def test_the_lean_path_admits_the_same_pod_as_kopf(kenv_main: Any, case: str) -> None:
    admission = Admission()
    spec = {"environmentVariables": {"STAGE": "train", "EPOCHS": "3"},
            "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "wandb", "key": "key"}}]}
    admission.add_environment("torch", spec, BUILDING if case == "gated" else READY,
                              namespace=None if case == "cluster" else "team-a")
    extra = {"env": [{"name": "STAGE", "value": "mine"}]} if case == "clash" else {}
    label = "kenv.dev/cluster-environment" if case == "cluster" else "kenv.dev/environment"
    webhook = "inject-cluster-environment" if case == "cluster" else "inject-environment"
    request = review(pod({label: "torch"}, **extra))
    by_kopf, lean = admission.via_kopf(request, webhook), admission.via_lean_path(request, webhook)
    assert lean["uid"] == by_kopf["uid"] == request["request"]["uid"]
    assert admitted_pod(request, lean) == admitted_pod(request, by_kopf)
    assert lean.get("warnings") == by_kopf.get("warnings")
    admitted = admitted_pod(request, lean)
    if case == "gated":
        assert {"name": "kenv.dev/image"} in admitted["spec"]["schedulingGates"]
    else:
        assert admitted["spec"]["containers"][0]["image"] == ENV_IMAGE
    if case == "clash":
        assert lean["warnings"] and "STAGE" in lean["warnings"][0]


def test_the_lean_path_refuses_as_kopf_does(kenv_main: Any) -> None:
    admission = Admission()
    admission.add_environment("broken", {"docker": {"baseImage": "python:3.11", "dockerfile": "FROM x"}}, READY)
    for name, fragment in (("missing", "Environment team-a/missing does not exist"),
                           ("broken", "Environment broken has an invalid spec: spec.docker")):
        request = review(pod({"kenv.dev/environment": name}))
        by_kopf, lean = admission.via_kopf(request), admission.via_lean_path(request)
        assert lean["allowed"] is by_kopf["allowed"] is False
        assert lean["status"] == by_kopf["status"]
        assert lean["status"]["code"] == 400 and lean["status"]["message"].startswith(f"kenv: {fragment}")
        assert "patch" not in lean


def test_the_lean_path_leaves_what_kopfs_filters_skip(kenv_main: Any) -> None:
    admission = Admission()
    admission.add_environment("torch", {}, READY)
    unlabelled = review(pod({"app": "x"}))
    cluster_label_only = review(pod({"kenv.dev/cluster-environment": "torch"}))
    for request in (unlabelled, cluster_label_only):
        lean = admission.via_lean_path(request)
        assert lean == {"uid": request["request"]["uid"], "allowed": True} == admission.via_kopf(request)
    # kopf filters operations only in the webhook configuration it writes (the chart's rules say CREATE too);
    # the lean path checks again, so a hand-written configuration cannot re-inject a running pod's UPDATE.
    update = review(pod({"kenv.dev/environment": "torch"}), operation="UPDATE")
    assert admission.via_lean_path(update) == {"uid": update["request"]["uid"], "allowed": True}


def test_an_unexpected_error_refuses_the_pod_on_both_paths(kenv_main: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    admission = Admission()
    admission.add_environment("torch", {}, READY)

    def broken(*_: Any) -> None:
        raise KeyError("image")

    monkeypatch.setattr(admission.admission, "build_pod_mutation", broken)
    request = review(pod({"kenv.dev/environment": "torch"}))
    lean, by_kopf = admission.via_lean_path(request), admission.via_kopf(request)
    assert lean["allowed"] is by_kopf["allowed"] is False
    assert lean["status"]["code"] == by_kopf["status"]["code"] == 500
    assert lean["status"]["message"] == "kenv: internal error: 'image'"


def test_a_dry_run_is_answered_without_remembering_a_gated_pod(kenv_main: Any) -> None:
    from kenv import gating

    admission = Admission()
    admission.add_environment("torch", {}, BUILDING)
    dry = review(pod({"kenv.dev/environment": "torch"}), dry_run=True)
    for answer in (admission.via_lean_path(dry), admission.via_kopf(dry)):
        assert {"name": "kenv.dev/image"} in admitted_pod(dry, answer)["spec"]["schedulingGates"]
    assert not gating._awaiting
    admission.via_lean_path(review(pod({"kenv.dev/environment": "torch"})))
    assert gating._awaiting == {("Environment", "team-a", "torch")}


def test_the_lean_path_takes_only_pod_reviews_from_an_api_server(kenv_main: Any) -> None:
    from kenv import admission

    request = review(pod({"kenv.dev/environment": "torch"}))
    assert admission.takes(request)
    no_user = copy.deepcopy(request)
    del no_user["request"]["userInfo"]
    status = copy.deepcopy(request)
    status["request"]["subResource"] = "status"
    other = copy.deepcopy(request)
    other["request"]["resource"] = {"group": "batch", "version": "v1", "resource": "jobs"}
    assert not any(admission.takes(r) for r in (no_user, status, other, {"request": None}, {}))


def test_the_server_answers_kenvs_webhooks_itself_and_passes_the_rest_to_kopf(kenv_main: Any) -> None:
    import aiohttp

    from kenv.webhookserver import AdmissionServer

    admission = Admission()
    admission.add_environment("torch", {}, READY)
    to_kopf: list[str | None] = []

    async def kopf_fn(request: dict[str, Any], *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        to_kopf.append(webhook)
        return {"response": {"uid": request["request"]["uid"], "allowed": True}}

    async def scenario() -> list[dict[str, Any]]:
        server = AdmissionServer(admission.indexes, addr="127.0.0.1", port=0, insecure=True)
        server.port = server._allocate_free_port()
        answers = []
        async with aiohttp.ClientSession() as session:
            served = server(kopf_fn)
            config = await served.__anext__()
            try:
                request = review(pod({"kenv.dev/environment": "torch"}))
                jobs = copy.deepcopy(request)
                jobs["request"]["resource"]["resource"] = "jobs"
                for path, body in (("inject-environment", request), ("some-other-webhook", request),
                                   ("inject-environment", jobs)):
                    async with session.post(f"{config['url']}/{path}", json=body) as response:
                        answers.append(await response.json())
                async with session.post(f"{config['url']}/inject-environment", data=b"[1]") as response:
                    assert response.status == 400
            finally:
                await served.aclose()
        return answers

    lean, other, jobs = asyncio.run(scenario())
    assert to_kopf == ["some-other-webhook", "inject-environment"]
    assert "patch" in lean["response"] and "patch" not in other["response"] and "patch" not in jobs["response"]


def test_a_spec_is_validated_once_when_indexed_not_per_pod(kenv_main: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from kenv import admission
    from kenv.models import EnvironmentSpec

    harness = Admission()
    harness.add_environment("torch", {"environmentVariables": {"A": "1"}}, READY)
    validations = []
    original = EnvironmentSpec.model_validate

    def counting(*args: Any, **kwargs: Any) -> Any:
        validations.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(EnvironmentSpec, "model_validate", counting)
    for _ in range(3):
        assert harness.via_lean_path(review(pod({"kenv.dev/environment": "torch"})))["allowed"]
    assert validations == []

    body = kopf.Body({"metadata": {"name": "e", "namespace": "n", "uid": "u", "generation": 2},
                      "spec": {"python": {"userManagedDependencies": "maybe"}}, "status": {}})
    entry = admission.indexed(body)
    assert entry["spec"] is None and "spec.python.userManagedDependencies" in entry["invalid"]
    good = admission.indexed(kopf.Body({"metadata": {"name": "e", "uid": "u"}, "spec": {}, "status": {}}))
    assert good["invalid"] is None and good["spec"].environment_variables == {}


@pytest.mark.parametrize("verbose", [False, True])
def test_admissions_are_access_logged_only_when_verbose(kenv_main: Any, caplog: pytest.LogCaptureFixture,
                                                        verbose: bool) -> None:
    import aiohttp

    from kenv.webhookserver import ACCESS_LOGGER, AdmissionServer, quiet_access_log

    admission = Admission()
    admission.add_environment("torch", {}, READY)

    async def served_once() -> int:
        server = AdmissionServer(admission.indexes, addr="127.0.0.1", port=0, insecure=True)
        server.port = server._allocate_free_port()
        async with aiohttp.ClientSession() as session:
            served = server(lambda *_, **__: None)
            config = await served.__anext__()
            try:
                async with session.post(f"{config['url']}/inject-environment",
                                        json=review(pod({"kenv.dev/environment": "torch"}))) as response:
                    return response.status
            finally:
                await served.aclose()

    try:
        with caplog.at_level(logging.INFO):  # the root logger's level after kopf.configure()
            quiet_access_log(verbose)
            assert asyncio.run(served_once()) == 200
    finally:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)
    access = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    assert len(access) == (1 if verbose else 0)
