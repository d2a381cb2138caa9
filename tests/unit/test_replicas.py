"""Pure parts of replicated admission and leader election: the Lease decisions, the index-fill check, and which
handlers each role registers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kenv.admission import Indexes
from kenv.indexfill import expected_keys, missing
from kenv.leader import Timing, claimed, may_take, micro_time, released
from kenv.roles import Role
from kenv.versions import Snapshot

NOW = datetime(2026, 11, 28, 7, 0, 0, 123456, tzinfo=UTC)


# --- the Lease --------------------------------------------------------------------------------------------

def test_a_free_lease_or_our_own_may_be_taken_at_once() -> None:
    assert may_take({}, "me", 0.0, 15)
    assert may_take({"holderIdentity": ""}, "me", 0.0, 15)  # released by a leader on its way out
    assert may_take({"holderIdentity": "me"}, "me", 0.0, 15)


def test_another_holders_lease_only_once_unchanged_for_a_whole_duration() -> None:
    held = {"holderIdentity": "other", "renewTime": micro_time(NOW)}
    assert not may_take(held, "me", 14.9, 15)
    assert may_take(held, "me", 15.0, 15)


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    first = claimed({}, "a", NOW, 15)
    assert first == {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-11-28T07:00:00.123456Z",
                     "acquireTime": "2026-11-28T07:00:00.123456Z", "leaseTransitions": 0}
    later = datetime(2026, 11, 28, 7, 0, 2, tzinfo=UTC)
    renewed = claimed(first, "a", later, 15)
    assert renewed["acquireTime"] == first["acquireTime"] and renewed["renewTime"] == micro_time(later)
    assert renewed["leaseTransitions"] == 0
    taken = claimed(renewed, "b", later, 15)
    assert taken["holderIdentity"] == "b" and taken["acquireTime"] == micro_time(later)
    assert taken["leaseTransitions"] == 1


def test_a_released_lease_has_no_holder() -> None:
    spec = released(claimed({}, "a", NOW, 15))
    assert spec["holderIdentity"] == "" and may_take(spec, "b", 0.0, 15)


def test_timing_keeps_client_go_proportions() -> None:
    assert Timing.from_duration(15) == Timing(15, 10, 2)
    timing = Timing.from_duration(6)
    assert timing.retry < timing.renew_deadline < timing.duration  # a standby cannot take over before the
    # leader has stopped acting (renew deadline < duration)


# --- the index-fill readiness --------------------------------------------------------------------------------

def obj(name: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name} | ({"namespace": namespace} if namespace else {}), "spec": spec}


def version(env: str, number: int, namespace: str | None = "team") -> dict[str, Any]:
    kind = "Environment" if namespace else "ClusterEnvironment"
    return obj(f"{env}-v{number}", namespace or "kenv-system", version=number, image="r/x@sha256:" + "0" * 64,
               environment={"kind": kind, "namespace": namespace, "name": env, "uid": "u"})


def snapshot(body: dict[str, Any]) -> Snapshot:
    return Snapshot.from_object(body)


def test_missing_names_what_the_indexes_do_not_hold_yet() -> None:
    listed = expected_keys([obj("a", "team"), obj("b", "team")], [obj("curated")],
                           [version("a", 1), version("a", 2), version("curated", 1, None)])
    assert len(listed) == 6
    empty = Indexes({}, {}, {})
    assert len(missing(listed, empty)) == 6
    partial = Indexes({("team", "a"): [{}]}, {"curated": [{}]},
                      {("Environment", "team", "a"): [snapshot(version("a", 1))]})
    assert missing(listed, partial) == [("Environment", "team", "b"), ("EnvironmentVersion", "ClusterEnvironment",
                                                                         None, "curated", 1),
                                        ("EnvironmentVersion", "Environment", "team", "a", 2)]
    full = Indexes({("team", "a"): [{}], ("team", "b"): [{}]}, {"curated": [{}]},
                   {("Environment", "team", "a"): [snapshot(version("a", 1)), snapshot(version("a", 2))],
                    ("ClusterEnvironment", None, "curated"): [snapshot(version("curated", 1, None))]})
    assert missing(listed, full) == []


# --- which handlers each role runs ----------------------------------------------------------------------------

@pytest.fixture
def registries(operator_settings: None) -> dict[Role, Any]:
    from kenv.main import registry

    return {role: registry(role) for role in Role}


def handler_ids(registry: Any) -> dict[str, set[str]]:
    return {"changing": {h.id for h in registry._changing.get_all_handlers()},
            "spawning": {h.id for h in registry._spawning.get_all_handlers()},
            "webhooks": {h.id for h in registry._webhooks.get_all_handlers()},
            "indexing": {h.id for h in registry._indexing.get_all_handlers()},
            "activities": {h.id for h in registry._activities.get_all_handlers()}}


def test_admission_never_reconciles_and_the_reconciler_never_admits(registries: dict[Role, Any]) -> None:
    admission, reconciler, both = (handler_ids(registries[r]) for r in (Role.ADMISSION, Role.RECONCILER, Role.ALL))
    assert not admission["changing"] and not admission["spawning"]  # no create/update/resume, no timers
    assert admission["webhooks"] == {"inject-environment", "inject-cluster-environment"}
    assert "index" in admission["activities"] and "registry" not in admission["activities"]
    assert not reconciler["webhooks"] and "index" not in reconciler["activities"]
    assert reconciler["changing"] and reconciler["spawning"] and "registry" in reconciler["activities"]
    # every role indexes the three kinds: admission answers from them, the reconciler finds waiting Environments
    assert admission["indexing"] == reconciler["indexing"] == both["indexing"] == {
        "environments", "cluster_environments", "environment_versions"}
    assert both["changing"] == reconciler["changing"] and both["webhooks"] == admission["webhooks"]


# --- gated pods seen by the leader ------------------------------------------------------------------------

def gated_pod(environment: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team", "name": "train", "labels": {"kenv.dev/environment": environment}}}


READY = {"phase": "Ready", "image": "r.local/envs@sha256:" + "a" * 64, "version": 2, "observedGeneration": 3}


@pytest.mark.parametrize(("status", "settled"), [
    (READY, True),
    ({**READY, "observedGeneration": 2}, False),  # Ready for an older spec: the reconcile under way settles it
    ({"phase": "Failed", "failedGeneration": 3}, False),  # the reconcile that failed it warns its pods
    ({"phase": "Building"}, False),
])
def test_a_gated_pod_of_an_environment_ready_for_its_spec_is_settled_at_once(
        monkeypatch: pytest.MonkeyPatch, status: dict, settled: bool) -> None:
    """A pod gated after its Environment turned Ready (a lagging admission replica) gets no reconcile or poll, so
    the leader's watch settles that pod itself, from its own index, without listing pods."""
    import asyncio

    from kenv import gatewatch, gating

    calls: list[tuple[Any, ...]] = []

    async def settle(ref: Any, pod: dict[str, Any], seen: dict[str, Any]) -> None:
        calls.append((ref, pod["metadata"]["name"], seen["phase"]))
    monkeypatch.setattr(gating, "settle", settle)
    monkeypatch.setattr(gating, "_awaiting", set())
    entry = {"status": status, "generation": 3, "rebuild": None}
    asyncio.run(gatewatch.note(gated_pod("torch"), lambda ref: entry if ref.name == "torch" else None))
    ref = gatewatch.awaited(gated_pod("torch"))
    assert ref is not None and gating.may_have_gated_pods(ref)  # remembered either way: the reconcile looks
    assert calls == ([(ref, "train", "Ready")] if settled else [])
    asyncio.run(gatewatch.note(gated_pod("unknown"), lambda ref: None))  # not indexed (yet): remembered only
    assert len(calls) == (1 if settled else 0)


def test_a_pod_that_cannot_be_settled_does_not_stop_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from kenv import gatewatch, gating

    async def refused(*_: Any) -> None:
        raise RuntimeError("403 from a policy webhook")
    monkeypatch.setattr(gating, "settle", refused)
    monkeypatch.setattr(gating, "_awaiting", set())
    entry = {"status": READY, "generation": 3, "rebuild": None}
    asyncio.run(gatewatch.note(gated_pod("torch"), lambda ref: entry))  # logged, not raised
