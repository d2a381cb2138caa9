"""stallwatch: a callback that blocks the event loop is logged with the stack it is stuck in, and its length."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kenv import metrics, stallwatch


def blocking_step() -> None:
    time.sleep(1.2)


def test_a_blocked_loop_is_logged_where_it_blocks_and_for_how_long(caplog: pytest.LogCaptureFixture) -> None:
    before = metrics.LOOP_STALLS._value.get()

    async def scenario() -> None:
        watch = stallwatch.StallWatch(threshold=0.5, tick=0.05)
        beating = asyncio.create_task(watch.heartbeat())
        stallwatch.threading.Thread(target=watch.watch, daemon=True).start()
        try:
            await asyncio.sleep(0.2)
            blocking_step()
            await asyncio.sleep(0.3)  # the heartbeat runs again: the stall's end is logged
        finally:
            watch.stop()
            beating.cancel()

    with caplog.at_level(logging.WARNING, logger="kenv.stallwatch"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    # A busy machine may add a stall of its own: look for this one.
    at = next(i for i, m in enumerate(messages) if m.startswith("event loop blocked for") and "in blocking_step" in m)
    ended = messages[at + 1]
    assert ended.startswith("event loop was blocked for "), messages
    assert float(ended.removeprefix("event loop was blocked for ").removesuffix(" s")) >= 1.1
    assert metrics.LOOP_STALLS._value.get() >= before + 1


def test_a_busy_but_responsive_loop_is_not_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        watch = stallwatch.StallWatch(threshold=1.0, tick=0.05)
        beating = asyncio.create_task(watch.heartbeat())
        stallwatch.threading.Thread(target=watch.watch, daemon=True).start()
        try:
            for _ in range(20):
                time.sleep(0.03)  # short steps, each yielding
                await asyncio.sleep(0)
        finally:
            watch.stop()
            beating.cancel()

    with caplog.at_level(logging.WARNING, logger="kenv.stallwatch"):
        asyncio.run(scenario())
    assert not caplog.records
