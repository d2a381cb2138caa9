"""What the reconciler writes to an Environment's status: only the fields that change (status.changed_fields)."""

from __future__ import annotations

from kenv.status import changed_fields

READY = {"phase": "Ready", "version": 2, "observedGeneration": 3,
         "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 3}],
         "buildJob": {"name": "kenv-build-abc", "namespace": "kenv-system"}}


def test_a_resumed_ready_environment_patches_nothing() -> None:
    assert changed_fields(READY, {"observedGeneration": 3, "conditions": READY["conditions"]}) == {}


def test_only_the_fields_that_differ_are_sent() -> None:
    patch = {"phase": "Ready", "version": 3, "observedGeneration": 4}
    assert changed_fields(READY, patch) == {"version": 3, "observedGeneration": 4}


def test_a_removal_is_sent_only_for_a_field_that_is_set() -> None:
    assert changed_fields(READY, {"buildJob": None, "failedGeneration": None}) == {"buildJob": None}


def test_a_nested_change_sends_the_whole_field() -> None:
    job = {"name": "kenv-build-def", "namespace": "kenv-system"}
    assert changed_fields(READY, {"buildJob": job}) == {"buildJob": job}
