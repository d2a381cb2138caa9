"""kube.list_pods, list_jobs and list_plain against a small HTTP server speaking the API's list protocol: pages followed
by their continue token, selectors sent, a refusal raised as the client raises it, and the answer as the API's
JSON. gating.gated_pods_selector: which pods a follow-up lists."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kenv import gating, kube


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-11-29T07:00:00Z"},
            "spec": {"schedulingGates": [{"name": "kenv.dev/image"}], "containers": [{"name": "c", "image": "i"}]}}


class FakePods:
    """GET /api/v1/namespaces/{ns}/pods in pages of one pod; namespace `gone` answers 403."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.queries: list[dict[str, str]] = []

    async def list(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if request.match_info["namespace"] == "gone":
            return web.json_response({"kind": "Status", "code": 403, "message": "forbidden"}, status=403,
                                     reason="Forbidden")
        at = int(request.query.get("continue") or 0)
        more = {"continue": str(at + 1)} if at + 1 < len(self.names) else {}
        return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "7", **more},
                                  "items": [pod(self.names[at])]})


def run_against(fake: FakePods, monkeypatch: pytest.MonkeyPatch, scenario: Any) -> Any:
    async def main() -> Any:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", fake.list)
        app.router.add_get("/apis/batch/v1/namespaces/{namespace}/jobs", fake.list)
        server = TestServer(app)
        await server.start_server()
        api = client.ApiClient(client.Configuration(host=str(server.make_url("")).rstrip("/")))
        monkeypatch.setattr(kube, "_api", api)
        try:
            return await scenario()
        finally:
            await api.close()
            await server.close()
    return asyncio.run(main())


def test_every_page_is_listed_with_the_selectors_and_comes_back_as_the_apis_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePods(["a", "b", "c"])
    pods = run_against(fake, monkeypatch,
                       lambda: kube.list_pods("ns", "kenv.dev/environment=x", "status.phase=Pending"))
    assert [p["metadata"]["name"] for p in pods] == ["a", "b", "c"]
    assert pods[0] == pod("a")  # no model round trip: the timestamp stays the API's string
    assert [q.get("continue") for q in fake.queries] == [None, "1", "2"]
    assert all(q["labelSelector"] == "kenv.dev/environment=x" and q["fieldSelector"] == "status.phase=Pending"
               and q["limit"] == str(kube.LIST_PAGE) for q in fake.queries)


def test_jobs_are_listed_a_page_at_a_time_too(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePods(["job-a", "job-b"])
    jobs = run_against(fake, monkeypatch, lambda: kube.list_jobs("ns", "kenv.dev/role=build"))
    assert [j["metadata"]["name"] for j in jobs] == ["job-a", "job-b"]
    assert [(q.get("continue"), q["labelSelector"], q["limit"]) for q in fake.queries] == [
        (None, "kenv.dev/role=build", str(kube.LIST_PAGE)), ("1", "kenv.dev/role=build", str(kube.LIST_PAGE))]


def test_a_refused_list_raises_the_clients_api_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> ApiException:
        with pytest.raises(ApiException) as raised:
            await kube.list_pods("gone", "a=b")
        return raised.value

    error = run_against(FakePods([]), monkeypatch, scenario)
    assert (error.status, error.reason) == (403, "Forbidden")
    assert '"forbidden"' in error.body


def test_a_follow_up_lists_labelled_pods_and_after_a_restart_every_pending_one() -> None:
    assert gating.gated_pods_selector(restarted=False) == {"labels": "kenv.dev/awaiting-image=true"}
    # a pod gated by a release before the label has only the annotation: found by its phase
    assert gating.gated_pods_selector(restarted=True) == {"fields": "status.phase=Pending"}
