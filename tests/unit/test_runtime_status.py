"""runtime.reconcile writes the reconciler's answer to the status itself, before kopf records the change as
handled: the whole answer when it changes anything, nothing when it changes nothing, and nothing after it (no
Events, no gated pods released) when the Environment is gone."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from kenv.reconcile import Outcome

READY = {"phase": "Ready", "observedGeneration": 1, "failedGeneration": None}


class Recorder:
    def __init__(self, outcome: Outcome, exists: bool = True) -> None:
        self.outcome, self.exists = outcome, exists
        self.patches: list[dict[str, Any]] = []
        self.after: list[str] = []  # what followed the patch, in order

    async def reconcile(self, ref: Any, body: dict[str, Any], log: Any) -> Outcome:
        return self.outcome

    async def patch_status(self, ref: Any, status: dict[str, Any]) -> bool:
        self.patches.append(dict(status))
        return self.exists


@pytest.fixture
def run(operator_settings: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    from kenv import gating, kube, runtime

    def start(recorder: Recorder, status: dict[str, Any]) -> Any:
        monkeypatch.setattr(runtime, "_reconciler", recorder)
        monkeypatch.setattr(kube, "patch_status", recorder.patch_status)
        monkeypatch.setattr(kopf, "event", lambda *_, reason, **__: recorder.after.append(f"event {reason}"))

        async def follow_up(*_: Any) -> None:
            recorder.after.append("follow_up")

        monkeypatch.setattr(gating, "follow_up", follow_up)
        body = kopf.Body({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                          "metadata": {"name": "e", "namespace": "n", "generation": 1}, "status": status})
        return runtime.reconcile("Environment", body, logging.getLogger("test"))

    return start


async def test_an_answer_that_changes_the_status_is_written_whole(run: Any) -> None:
    # The body predates a timer's failedGeneration; the answer removes it: sent, although the body lacks it.
    recorder = Recorder(Outcome({**READY, "version": 2}, [("Normal", "Ready", "version 2")]))
    await run(recorder, {"phase": "Building", "observedGeneration": 1})
    assert recorder.patches == [{**READY, "version": 2}]
    assert recorder.after == ["event Ready", "follow_up"]


async def test_an_answer_that_changes_nothing_costs_no_request(run: Any) -> None:
    recorder = Recorder(Outcome({"phase": "Ready", "observedGeneration": 1}))
    await run(recorder, {"phase": "Ready", "observedGeneration": 1})
    assert recorder.patches == [] and recorder.after == ["follow_up"]


async def test_nothing_follows_the_answer_of_an_environment_deleted_meanwhile(run: Any) -> None:
    recorder = Recorder(Outcome(dict(READY), [("Normal", "Ready", "version 1")]), exists=False)
    await run(recorder, {})
    assert len(recorder.patches) == 1 and recorder.after == []
