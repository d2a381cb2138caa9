"""The status contract examples/controllers/wait_for_environment.py reads: only a status for the current spec
decides, Built (not Ready) says this spec's image exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/controllers/wait_for_environment.py"
spec = importlib.util.spec_from_file_location("wait_for_environment", EXAMPLE)
assert spec and spec.loader
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

IMAGE = "registry.local/kenv/environments@sha256:" + "a" * 64


def env(generation: int, observed: int, built: str | None, ready: str = "True", image: str | None = IMAGE,
        reason: str = "Built") -> dict:
    conditions = [{"type": "Ready", "status": ready, "observedGeneration": observed, "reason": reason}]
    if built is not None:
        conditions.append({"type": "Built", "status": built, "observedGeneration": observed, "reason": reason,
                           "message": "the message"})
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "conditions": conditions, "image": image}}


def test_built_for_the_current_generation_gives_the_image():
    assert example.verdict(env(2, 2, "True")) == ("built", IMAGE)


@pytest.mark.parametrize("body", [
    env(3, 2, "True"),                                            # status of an older spec
    env(2, 2, "Unknown", reason="PreviousVersionServing"),        # Ready with the previous version, still building
    env(2, 2, None),                                              # no Built condition yet
    env(2, 2, "True", image=None),                                # no image recorded
    {"metadata": {"generation": 1}},                              # no status at all
])
def test_no_verdict_until_the_current_spec_is_built_or_failed(body):
    assert example.verdict(body) is None


def test_failed_build_of_the_current_spec_gives_the_reason():
    assert example.verdict(env(2, 2, "False", ready="False", reason="BuildFailed")) == (
        "failed", "BuildFailed: the message")
