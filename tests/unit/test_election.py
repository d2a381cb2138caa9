"""Leader election (leader.py) against an in-memory Lease API, and the small pieces around the replicated
operator: roles.until_stopped, webhookserver.Drain, gating.first_warning and gatewatch.awaited.

The election tests drive `Election` with a fake CoordinationV1Api that keeps the API server's optimistic
concurrency (every write names the resourceVersion it read; a stale one gets 409) and a fake monotonic clock;
the tests of keep() use real time with small Timing values, since keep() sleeps between renewals.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp.web
import pytest
from aiohttp.test_utils import make_mocked_request
from kubernetes_asyncio.client.exceptions import ApiException

from kenv import gatewatch, gating, roles
from kenv.leader import Election, LeaseConflict, Timing, may_take
from kenv.models import CLUSTER_ENVIRONMENT_LABEL, ENVIRONMENT_LABEL
from kenv.refs import EnvironmentRef
from kenv.webhookserver import Drain

NAMESPACE, NAME = "kenv-system", "kenv-reconciler"
DEFAULTS = Timing()
FAST = Timing(duration=1.5, renew_deadline=1.0, retry=0.05)  # for keep(), which sleeps in real time


class FakeLeases:
    """The Lease calls of a CoordinationV1Api, answered like the API server: 404 for a missing Lease, 409 for a
    create of an existing one or a replace naming another resourceVersion, which every accepted write bumps.
    `fail` scripts errors, `hang` makes every call wait forever (a half-open connection), and `after_next_read`
    runs once between a read and the caller's next step (another client's write, a clock moving)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0  # accepted creates and replaces
        self.hanging = False
        self._version = 0
        self._failures: dict[str, list[int]] = {}
        self._after_read: list[Callable[[], None]] = []

    def fail(self, call: str, *statuses: int) -> None:
        """The next calls of `call` ("read", "create" or "replace") raise ApiException with these statuses."""
        self._failures.setdefault(call, []).extend(statuses)

    def pending_failures(self) -> int:
        return sum(len(statuses) for statuses in self._failures.values())

    def hang(self) -> None:
        self.hanging = True

    def after_next_read(self, action: Callable[[], None]) -> None:
        self._after_read.append(action)

    def put(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Another client's write (no resourceVersion check)."""
        self._store({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def spec(self, namespace: str = NAMESPACE, name: str = NAME) -> dict[str, Any]:
        return self.leases[(namespace, name)]["spec"]

    def _store(self, body: dict[str, Any]) -> None:
        lease = copy.deepcopy(body)
        self._version += 1
        lease["metadata"]["resourceVersion"] = str(self._version)
        self.leases[(lease["metadata"]["namespace"], lease["metadata"]["name"])] = lease
        self.writes += 1

    async def _enter(self, call: str) -> None:
        if self.hanging:
            await asyncio.Event().wait()  # never set: only a timeout or a cancellation ends it
        if self._failures.get(call):
            raise ApiException(status=self._failures[call].pop(0))

    async def read_namespaced_lease(self, name: str, namespace: str) -> dict[str, Any]:
        await self._enter("read")
        lease = copy.deepcopy(self.leases.get((namespace, name)))
        if self._after_read:
            self._after_read.pop(0)()
        if lease is None:
            raise ApiException(status=404)
        return lease

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> None:
        await self._enter("create")
        if (namespace, body["metadata"]["name"]) in self.leases:
            raise ApiException(status=409)
        self._store(body)

    async def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        await self._enter("replace")
        stored = self.leases.get((namespace, name))
        if stored is None:
            raise ApiException(status=404)
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        self._store(body)


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def api() -> FakeLeases:
    return FakeLeases()


def candidate(api: FakeLeases, me: str, timing: Timing = DEFAULTS, clock: Callable[[], float] = time.monotonic,
              ) -> Election:
    return Election(NAMESPACE, NAME, me=me, timing=timing, clock=clock, api=api)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# Election: taking the Lease


def test_one_candidate_leads_and_the_other_takes_over_after_a_still_lease_duration_on_its_own_clock(
        api: FakeLeases) -> None:
    a_clock, b_clock = FakeClock(0), FakeClock(1000)  # unrelated clocks: only B's own counts for B
    a, b = candidate(api, "a", clock=a_clock), candidate(api, "b", clock=b_clock)

    async def scenario() -> None:
        assert await a.try_once()
        assert api.spec()["leaseTransitions"] == 0
        assert not await b.try_once()  # first sight of A's record: unchanged for 0 s
        assert b.holder == "a"
        b_clock.advance(10)
        assert await a.try_once()  # A renews: the record changes
        b_clock.advance(10)
        assert not await b.try_once()  # 20 s since B first looked, but 0 s since the record changed
        b_clock.advance(14)
        a_clock.advance(1000)  # A's clock means nothing to B
        assert not await b.try_once()  # 14 s < 15 s
        b_clock.advance(1)
        assert await b.try_once()  # unchanged for a whole lease duration as B saw it
        assert not await a.try_once()  # A now finds B recorded, a record that just changed
        assert a.holder == "b"

    asyncio.run(scenario())
    assert api.spec()["holderIdentity"] == "b"
    assert api.spec()["leaseTransitions"] == 1


def test_a_longer_recorded_lease_duration_is_honoured(api: FakeLeases) -> None:
    b_clock = FakeClock()
    a = candidate(api, "a", timing=Timing.from_duration(30))
    b = candidate(api, "b", timing=Timing.from_duration(15), clock=b_clock)

    async def scenario() -> None:
        assert await a.try_once()
        assert api.spec()["leaseDurationSeconds"] == 30
        assert not await b.try_once()
        b_clock.advance(15)
        assert not await b.try_once()  # B's own duration has passed, not A's
        b_clock.advance(15)
        assert await b.try_once()

    asyncio.run(scenario())
    assert api.spec()["holderIdentity"] == "b"
    assert api.spec()["leaseDurationSeconds"] == 15


def test_may_take() -> None:
    held = {"holderIdentity": "a", "leaseDurationSeconds": 30}
    assert not may_take(held, "b", unchanged_for=29.9, duration=15)
    assert may_take(held, "b", unchanged_for=30, duration=15)
    assert not may_take({"holderIdentity": "a", "leaseDurationSeconds": 5}, "b", unchanged_for=10, duration=15)
    assert may_take(held, "a", unchanged_for=0, duration=15)  # its own record: a renewal
    assert may_take({"holderIdentity": "", "leaseDurationSeconds": 1}, "b", unchanged_for=0, duration=15)
    assert may_take({}, "b", unchanged_for=0, duration=15)


@pytest.mark.parametrize("lease_exists", [False, True], ids=["create", "replace"])
def test_a_write_that_lost_a_race_raises_lease_conflict(api: FakeLeases, lease_exists: bool) -> None:
    me = candidate(api, "a", clock=FakeClock())
    if lease_exists:
        asyncio.run(me.try_once())
    # between our read and our write, another candidate writes
    api.after_next_read(lambda: api.put(NAMESPACE, NAME, {"holderIdentity": "b", "leaseDurationSeconds": 15,
                                                          "renewTime": "2030-01-01T00:00:00.000000Z"}))
    with pytest.raises(LeaseConflict):
        asyncio.run(me.try_once())
    assert api.spec()["holderIdentity"] == "b"


def test_renewed_at_is_when_a_successful_attempt_started(api: FakeLeases) -> None:
    clock = FakeClock(100)
    me = candidate(api, "a", clock=clock)

    async def scenario() -> None:
        api.after_next_read(lambda: clock.advance(5))  # a slow read
        assert await me.try_once()
        assert me.renewed_at == 100
        api.after_next_read(lambda: clock.advance(5))
        assert await me.try_once()
        assert me.renewed_at == 105
        api.fail("replace", 500)
        with pytest.raises(ApiException):
            await me.try_once()
        assert me.renewed_at == 105  # a failed attempt renews nothing

    asyncio.run(scenario())


# Election: keeping the Lease


def test_keep_returns_when_another_holder_is_recorded(api: FakeLeases) -> None:
    me = candidate(api, "a", timing=FAST)

    async def scenario() -> str:
        assert await me.try_once()
        api.put(NAMESPACE, NAME, {**api.spec(), "holderIdentity": "b"})
        return await asyncio.wait_for(me.keep(), 5)

    assert asyncio.run(scenario()) == "the Lease is held by b"


def test_keep_returns_by_the_renew_deadline_when_every_renewal_hangs(api: FakeLeases) -> None:
    me = candidate(api, "a", timing=Timing(duration=1.5, renew_deadline=1.0, retry=0.2))

    async def scenario() -> str:
        assert await me.try_once()
        api.hang()  # a half-open connection: no answer, no error
        return await asyncio.wait_for(me.keep(), 5)  # far less than the 5 s, or TimeoutError fails the test

    assert asyncio.run(scenario()) == "no renewal succeeded for 1 s"
    assert time.monotonic() - me.renewed_at >= 1.0  # and not before the deadline


STALLING = Timing(duration=1.5, renew_deadline=0.5, retry=0.1)


async def keeping_through_a_stall(me: Election, meanwhile: Callable[[], None] = lambda: None) -> asyncio.Task[str]:
    """me.keep() running, after the event loop was blocked past the renew deadline (`meanwhile` happening then)."""
    assert await me.try_once()
    keeping = asyncio.create_task(me.keep())
    await asyncio.sleep(0.05)
    meanwhile()
    time.sleep(0.8)  # the loop blocked: no renewal can run
    return keeping


def test_a_leader_whose_process_stalled_past_the_deadline_renews_once_and_keeps_the_lease(api: FakeLeases) -> None:
    """A callback that blocks the event loop past the renew deadline (seen in a new leader's first seconds on a
    busy node) is not a lost Lease when no candidate wrote meanwhile: the next write shows it."""
    me = candidate(api, "a", timing=STALLING)

    async def scenario() -> None:
        written = api.writes
        keeping = await keeping_through_a_stall(me)
        try:
            await wait_until(lambda: api.writes >= written + 3)  # renewed after the stall, and on
            assert not keeping.done()
        finally:
            keeping.cancel()

    asyncio.run(scenario())
    assert api.spec()["holderIdentity"] == "a"


def test_a_leader_that_stalled_while_another_took_the_lease_gives_it_up(api: FakeLeases) -> None:
    me = candidate(api, "a", timing=STALLING)

    async def scenario() -> str:
        taken = lambda: api.put(NAMESPACE, NAME, {**api.spec(), "holderIdentity": "b"})  # noqa: E731
        return await asyncio.wait_for(await keeping_through_a_stall(me, taken), 5)

    assert asyncio.run(scenario()).endswith("the process having stalled past it: the Lease is held by b")
    assert api.spec()["holderIdentity"] == "b"


def test_a_leader_that_stalled_past_the_lease_duration_gives_it_up_without_a_write(api: FakeLeases) -> None:
    """Past the duration a candidate may be taking the Lease this very moment: no attempt, the process exits."""
    me = candidate(api, "a", timing=STALLING)

    async def scenario() -> str:
        keeping = await keeping_through_a_stall(me, lambda: time.sleep(1.0))  # 1.8 s in all, duration 1.5 s
        written = api.writes
        why = await asyncio.wait_for(keeping, 5)
        assert api.writes == written
        return why

    assert asyncio.run(scenario()) == "no renewal succeeded for 0 s"


def test_a_leader_that_stalled_and_cannot_renew_gives_the_lease_up_within_a_retry(api: FakeLeases) -> None:
    me = candidate(api, "a", timing=STALLING)

    async def scenario() -> str:
        keeping = await keeping_through_a_stall(me, api.hang)
        woke = time.monotonic()
        why = await asyncio.wait_for(keeping, 5)
        assert time.monotonic() - woke < 0.5  # one attempt of a retry period, not another deadline
        return why

    assert "the process having stalled past it: the renewal failed" in asyncio.run(scenario())


@pytest.mark.parametrize(("call", "status"), [("read", 500), ("replace", 503), ("replace", 409)])
def test_a_single_failed_renewal_does_not_lose_leadership(api: FakeLeases, call: str, status: int) -> None:
    me = candidate(api, "a", timing=FAST)

    async def scenario() -> None:
        assert await me.try_once()
        api.fail(call, status)
        written = api.writes
        keeping = asyncio.create_task(me.keep())
        try:
            await wait_until(lambda: api.writes >= written + 3)  # renewals go on after the failure
            assert api.pending_failures() == 0  # the failure did happen
            assert not keeping.done()
        finally:
            keeping.cancel()

    asyncio.run(scenario())
    assert api.spec()["holderIdentity"] == "a"


# Election: releasing the Lease


def test_release_frees_the_lease_we_hold_so_a_candidate_takes_it_at_once(api: FakeLeases) -> None:
    a, b = candidate(api, "a", clock=FakeClock()), candidate(api, "b", clock=FakeClock())

    async def scenario() -> None:
        assert await a.try_once()
        await a.release()
        assert api.spec()["holderIdentity"] == ""
        assert await b.try_once()  # no lease duration to wait out

    asyncio.run(scenario())
    assert api.spec()["holderIdentity"] == "b"


def test_release_leaves_a_lease_someone_else_holds(api: FakeLeases) -> None:
    me = candidate(api, "a", clock=FakeClock())

    async def scenario() -> None:
        assert await me.try_once()
        api.put(NAMESPACE, NAME, {**api.spec(), "holderIdentity": "b"})
        before = copy.deepcopy(api.leases)
        await me.release()
        assert api.leases == before  # resourceVersion included: nothing was written

    asyncio.run(scenario())


def test_release_of_a_missing_lease_creates_nothing(api: FakeLeases) -> None:
    asyncio.run(candidate(api, "a", clock=FakeClock()).release())
    assert api.leases == {}


# roles.until_stopped


def test_until_stopped_returns_the_result_of_the_work() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 42

    async def scenario() -> int | None:
        return await roles.until_stopped(work(), asyncio.Event())

    assert asyncio.run(scenario()) == 42


def test_until_stopped_cancels_the_work_when_stopped_first() -> None:
    cancelled = False

    async def endless() -> int:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        return 42

    async def scenario() -> int | None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, stop.set)
        waiting = asyncio.create_task(roles.until_stopped(endless(), stop))
        done, _ = await asyncio.wait({waiting}, timeout=5)  # no wait_for: its cancellation would end the work
        waiting.cancel()
        assert waiting in done
        return waiting.result()

    assert asyncio.run(scenario()) is None
    assert cancelled


# webhookserver.Drain


def test_drain_closes_every_connection_once_begun() -> None:
    drain = Drain()

    async def prepared(response: aiohttp.web.StreamResponse) -> aiohttp.web.StreamResponse:
        await response.prepare(make_mocked_request("POST", "/", headers={"Connection": "keep-alive"}))
        return response

    before = drain.answer(aiohttp.web.json_response({}))
    assert before.keep_alive is not False
    assert asyncio.run(prepared(before)).keep_alive
    assert "Connection" not in before.headers

    drain.begin()
    drain.begin()  # a second preStop signal changes nothing
    assert drain.draining
    after = drain.answer(aiohttp.web.json_response({}))
    assert after.keep_alive is False
    assert asyncio.run(prepared(after)).headers["Connection"] == "close"


# gating.first_warning


@pytest.fixture
def no_warnings_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "_warned", OrderedDict())


@pytest.mark.usefixtures("no_warnings_given")
def test_first_warning_is_true_once_per_pod_reason_and_version() -> None:
    assert gating.first_warning("uid-1", "EnvironmentChanged", "v2")
    assert not gating.first_warning("uid-1", "EnvironmentChanged", "v2")
    assert gating.first_warning("uid-1", "EnvironmentChanged", "v3")
    assert gating.first_warning("uid-1", "EnvironmentBuildFailed", "v3")
    assert gating.first_warning("uid-2", "EnvironmentChanged", "v2")
    assert not gating.first_warning("uid-1", "EnvironmentChanged", "v3")


@pytest.mark.usefixtures("no_warnings_given")
def test_first_warning_forgets_the_oldest_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gating, "WARNED_KEPT", 2)
    for uid in ("oldest", "middle", "newest"):
        assert gating.first_warning(uid, "EnvironmentChanged", 1)
    assert len(gating._warned) == 2
    assert not gating.first_warning("newest", "EnvironmentChanged", 1)
    assert not gating.first_warning("middle", "EnvironmentChanged", 1)
    assert gating.first_warning("oldest", "EnvironmentChanged", 1)  # forgotten: one warning more, never none



@pytest.mark.usefixtures("no_warnings_given")
def test_a_warning_that_could_not_be_posted_is_not_recorded(caplog: pytest.LogCaptureFixture) -> None:
    """Outside kopf's handlers (the gated-pod watch) kopf has no Event poster: the warning is logged and left
    for the reconcile's follow-up to post, never marked as given."""
    meta = {"uid": "uid-1", "namespace": "team", "name": "train"}
    gating._warn(meta, "EnvironmentChanged", 2, "changed while this pod waited")
    assert ("uid-1", "EnvironmentChanged", 2) not in gating._warned
    assert "changed while this pod waited" in caplog.text


def test_an_error_answer_while_draining_closes_its_connection_too() -> None:
    from kenv import webhookserver

    async def answer() -> aiohttp.web.StreamResponse:
        server = webhookserver.AdmissionServer(None)

        async def refused(*_: Any) -> aiohttp.web.Response:
            raise aiohttp.web.HTTPBadRequest(reason="not an AdmissionReview")
        server._answer = refused  # type: ignore[method-assign]
        return await server._serve(None, make_mocked_request("POST", "/x"))
    drain = webhookserver.DRAIN
    try:
        with pytest.raises(aiohttp.web.HTTPBadRequest):  # not draining: aiohttp answers it as usual
            asyncio.run(answer())
        drain.begin()
        response = asyncio.run(answer())
        assert response.status == 400 and response.keep_alive is False
    finally:
        drain.draining = False


# gatewatch.awaited


def test_awaited_names_the_environment_a_gated_pod_waits_for() -> None:
    def pod(labels: dict[str, str] | None) -> dict[str, Any]:
        return {"metadata": {"name": "p", "namespace": "team-a", "labels": labels}}

    assert gatewatch.awaited(pod({ENVIRONMENT_LABEL: "torch", "app": "x"})) == \
        EnvironmentRef(kind="Environment", namespace="team-a", name="torch")
    assert gatewatch.awaited(pod({CLUSTER_ENVIRONMENT_LABEL: "base"})) == \
        EnvironmentRef(kind="ClusterEnvironment", namespace=None, name="base")
    assert gatewatch.awaited(pod({"app": "x"})) is None
    assert gatewatch.awaited(pod(None)) is None
    assert gatewatch.awaited({}) is None
