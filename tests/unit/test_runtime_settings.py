"""The operator's runtime choices: the poll timer's filter (runtime.unsettled), the API client's environment."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from kenv.buildwatch import ANNOTATION


@pytest.fixture
def unsettled(operator_settings: None) -> Any:
    from kenv import runtime

    return runtime.unsettled


def body(generation: int, status: dict[str, Any], annotations: dict[str, str] | None = None,
         spec: dict[str, Any] | None = None) -> kopf.Body:
    return kopf.Body({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                      "metadata": {"name": "e", "namespace": "n", "generation": generation,
                                   "annotations": annotations or {}},
                      "spec": spec or {"environmentVariables": {"A": "1"}}, "status": status})


def handled(spec: dict[str, Any] | None = None, seen: dict[str, str] | None = None, **annotations: str
            ) -> dict[str, str]:
    """The annotations kopf writes once the change handlers succeeded for this spec and the annotations `seen`
    (its diffbase, and the marker of its storage prefix), plus `seen` and `annotations`."""
    import json

    from kenv.runtime import DIFFBASE

    essence = DIFFBASE.build(body=body(1, {}, annotations=seen, spec=spec))
    return {"kenv.dev/kopf-managed": "yes",
            "kenv.dev/last-handled-configuration": json.dumps(essence, separators=(",", ":")),
            **(seen or {}), **annotations}


def test_a_change_kopf_has_not_handled_is_left_to_its_change_handler(unsettled: Any) -> None:
    assert not unsettled(body(1, {}))  # just created: the create handler has it
    old, new = {"environmentVariables": {"A": "1"}}, {"environmentVariables": {"A": "2"}}
    edited = body(3, {"phase": "Ready", "observedGeneration": 2}, handled(old), spec=new)
    assert not unsettled(edited)  # the update handler has it


def test_a_generation_nothing_answered_with_no_change_pending_is_polled(unsettled: Any) -> None:
    # Edited and reverted before kopf looked: kopf sees no change, so no handler will answer generation 3.
    spec = {"environmentVariables": {"A": "1"}}
    reverted = body(3, {"phase": "Ready", "observedGeneration": 1}, handled(spec), spec=spec)
    assert unsettled(reverted)


@pytest.mark.parametrize("phase", ["Building", "Queued", "Pending"])
def test_an_answered_generation_still_waiting_is_polled(unsettled: Any, phase: str) -> None:
    assert unsettled(body(2, {"phase": phase, "observedGeneration": 2}, handled()))


def test_a_ready_environment_is_polled_only_for_a_rebuild(unsettled: Any) -> None:
    ready = {"phase": "Ready", "observedGeneration": 2, "image": "r/e@sha256:" + "a" * 64, "version": 1}
    assert not unsettled(body(2, ready, handled()))
    # The rebuild token is an annotation under kopf's own prefix, so no change handler sees it: the generation
    # does not move, and the poll follows the rebuild's Job.
    assert unsettled(body(2, ready, handled(**{"kenv.dev/rebuild": "now"})))


def test_a_build_watch_nudge_is_left_to_the_update_handler(unsettled: Any) -> None:
    building = {"phase": "Building", "observedGeneration": 2, "buildJob": {"namespace": "b", "name": "j"}}
    nudged = handled(**{ANNOTATION: "uid-1"})
    assert not unsettled(body(2, building, nudged))  # the update handler reconciles it: not twice
    assert unsettled(body(2, building, handled(seen={ANNOTATION: "uid-1"})))  # once handled, the poll is back


def test_the_api_clients_session_has_the_switch_kube_turns_off() -> None:
    import asyncio

    import aiohttp
    from kubernetes_asyncio import client

    async def session_trusts_env() -> bool:
        api = client.ApiClient()
        try:
            return bool(api.rest_client.pool_manager._trust_env)
        finally:
            await api.close()

    assert "_trust_env" in aiohttp.ClientSession.ATTRS
    assert asyncio.run(session_trusts_env())  # kubernetes_asyncio's default, which kube.api_client() turns off


def test_the_api_client_trusts_the_environment_only_when_it_says_something(tmp_path: Any) -> None:
    from kenv.kube import uses_environment_settings

    assert not uses_environment_settings({"HOME": str(tmp_path)})
    assert uses_environment_settings({"HOME": str(tmp_path), "HTTPS_PROXY": "http://proxy:3128"})
    assert uses_environment_settings({"NETRC": "/etc/netrc"})
    (tmp_path / ".netrc").write_text("machine api login a password b\n")
    assert uses_environment_settings({"HOME": str(tmp_path)})
