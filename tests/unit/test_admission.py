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
def test_aiohttp_logs_the_requests_it_answers_only_when_verbose(kenv_main: Any, caplog: pytest.LogCaptureFixture,
                                                                verbose: bool) -> None:
    import aiohttp

    from kenv.webhookserver import ACCESS_LOGGER, AdmissionServer, quiet_access_log

    async def served_once() -> int:
        server = AdmissionServer(Admission().indexes, addr="127.0.0.1", port=0, insecure=True)
        server.port = server._allocate_free_port()
        async with aiohttp.ClientSession() as session:
            served = server(lambda *_, **__: None)
            config = await served.__anext__()
            try:  # not an AdmissionReview: the lean protocol leaves it to aiohttp, which refuses it
                async with session.post(f"{config['url']}/inject-environment", data=b"[1]") as response:
                    return response.status
            finally:
                await served.aclose()

    try:
        with caplog.at_level(logging.INFO):  # the root logger's level after kopf.configure()
            quiet_access_log(verbose)
            assert asyncio.run(served_once()) == 400
    finally:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)
    access = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    assert len(access) == (1 if verbose else 0)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes,
                   answers: int = 1) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Send `raw` on a kept-alive connection; the `answers` (headers, body: JSON if it is) read back in order."""
    writer.write(raw)
    await writer.drain()
    read = []
    for _ in range(answers):
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        status, *lines = head.strip().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        is_json = headers.get("content-type", "").startswith("application/json")
        read.append((headers | {":status": status}, json.loads(body) if is_json else {"text": body.decode()}))
    return read


def http_post(path: str, body: bytes, *headers: str) -> bytes:
    framing = [] if any(h.lower().startswith("transfer-encoding") for h in headers) else [
        f"Content-Length: {len(body)}"]
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: kenv", *framing, *headers, "", ""]).encode() + body


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_lean_protocol_answers_over_tls_and_hands_the_rest_to_aiohttp(kenv_main: Any, tmp_path: Any,
                                                                           loop: str) -> None:
    """One kept-alive TLS connection, as the API server keeps one: AdmissionReviews answered by the lean protocol
    (no Server header: aiohttp never saw them), pipelined and split ones too; a chunked one, sent in one write
    behind a lean one, handed to aiohttp with the connection, which answers it and the next one alike."""
    import ssl

    import uvloop

    from kenv.certs import write_serving_certs
    from kenv.webhookserver import AdmissionServer

    admission = Admission()
    admission.add_environment("torch", {}, READY)
    certs = write_serving_certs(tmp_path, ["localhost"])
    request = review(pod({"kenv.dev/environment": "torch"}))
    body = json.dumps(request).encode()
    expected = admission.via_lean_path(request)["patch"]

    async def scenario() -> list[tuple[dict[str, str], dict[str, Any]]]:
        server = AdmissionServer(admission.indexes, addr="127.0.0.1", port=0, host="localhost",
                                 certfile=str(certs / "tls.crt"), pkeyfile=str(certs / "tls.key"),
                                 cafile=str(certs / "ca.crt"))
        server.port = server._allocate_free_port()
        served = server(lambda *_, **__: None)
        config = await served.__anext__()
        assert config["url"] == f"https://localhost:{server.port}"
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context,
                                                           server_hostname="localhost")
            lean = http_post("/inject-environment?timeout=10s", body)
            answers = await exchange(reader, writer, lean)
            answers += await exchange(reader, writer, lean + lean, answers=2)
            for i in range(len(lean)):  # byte by byte
                writer.write(lean[i:i + 1])
                await writer.drain()
            answers += await exchange(reader, writer, b"")
            answers += await exchange(reader, writer, lean + http_post(
                "/inject-environment", chunked(body), "Transfer-Encoding: chunked"), answers=2)
            answers += await exchange(reader, writer, lean)
            writer.close()
        finally:
            await served.aclose()
        return answers

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    answers = runner(scenario())
    assert [headers[":status"] for headers, _ in answers] == ["HTTP/1.1 200 OK"] * 7
    assert all(answer["response"]["uid"] == request["request"]["uid"] for _, answer in answers)
    assert all(answer["response"]["patch"] == expected for _, answer in answers)
    by_aiohttp = ["server" in headers for headers, _ in answers]
    assert by_aiohttp == [False, False, False, False, False, True, True]


@pytest.mark.parametrize("asked", [True, False])
def test_a_lean_answer_closes_its_connection_when_asked_or_draining(kenv_main: Any, monkeypatch: pytest.MonkeyPatch,
                                                                     asked: bool) -> None:
    from kenv import webhookserver
    from kenv.webhookserver import AdmissionServer

    admission = Admission()
    admission.add_environment("torch", {}, READY)
    body = json.dumps(review(pod({"kenv.dev/environment": "torch"}))).encode()
    if not asked:
        monkeypatch.setattr(webhookserver, "DRAIN", webhookserver.Drain())
        webhookserver.DRAIN.begin()

    async def scenario() -> tuple[dict[str, str], bytes]:
        server = AdmissionServer(admission.indexes, addr="127.0.0.1", port=0, insecure=True)
        server.port = server._allocate_free_port()
        served = server(lambda *_, **__: None)
        await served.__anext__()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            close = ("Connection: close",) if asked else ()
            [(headers, _)] = await exchange(reader, writer, http_post("/inject-environment", body, *close))
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed the connection
            writer.close()
        finally:
            await served.aclose()
        return headers, rest

    headers, rest = asyncio.run(scenario())
    assert headers["connection"] == "close" and "server" not in headers
    assert rest == b""


def test_what_the_lean_protocol_cannot_answer_aiohttp_answers(kenv_main: Any) -> None:
    """Not JSON, JSON nested too deep for the decoder, a review whose pod is not an object: each handed to
    aiohttp (400, 400, 500), and a good review after it is answered, not a dropped connection."""
    from kenv.webhookserver import AdmissionServer

    admission = Admission()
    admission.add_environment("torch", {}, READY)
    body = json.dumps(review(pod({"kenv.dev/environment": "torch"}))).encode()
    not_a_pod = json.dumps(review("not a pod")).encode()  # type: ignore[arg-type]
    refused = [("/inject-environment", b"[1]"), ("/inject-environment", b"[" * 100_000),
               ("/inject-environment", not_a_pod)]

    async def scenario() -> list[str]:
        statuses = []
        server = AdmissionServer(admission.indexes, addr="127.0.0.1", port=0, insecure=True)
        server.port = server._allocate_free_port()
        served = server(lambda *_, **__: None)
        await served.__anext__()
        try:
            for path, bad in refused:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                [(headers, _)] = await exchange(reader, writer, http_post(path, bad))
                statuses.append(headers[":status"].split(" ")[1])
                if statuses[-1] == "500":  # aiohttp closes a connection whose handler raised
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                [(again, answer)] = await exchange(reader, writer, http_post("/inject-environment", body))
                assert again[":status"] == "HTTP/1.1 200 OK" and "patch" in answer["response"], path
                writer.close()
        finally:
            await served.aclose()
        return statuses

    assert asyncio.run(scenario()) == ["400", "400", "500"]
