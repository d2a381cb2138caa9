"""A watchdog of the event loop: when one callback holds it longer than `threshold` seconds, log where it is.

Everything kenv does runs on one asyncio loop, the leader's Lease renewals included: a callback that blocks it for
the Lease's renew deadline makes the leader give up the Lease and exit. Such a stall leaves nothing in the log
(the renewal that would have complained never ran), so a thread watches a heartbeat the loop keeps and, when the
heartbeat stops, logs the loop thread's stack while it is still stuck there, and the stall's length once it ends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from kenv import metrics

log = logging.getLogger(__name__)


class StallWatch:
    def __init__(self, threshold: float = 2.0, tick: float = 0.25) -> None:
        self.threshold, self.tick = threshold, tick
        self.beat_at = time.monotonic()
        self.loop_thread = threading.get_ident()
        self._stopped = threading.Event()

    async def heartbeat(self) -> None:
        """Runs on the watched loop until cancelled."""
        self.loop_thread = threading.get_ident()
        try:
            while True:
                self.beat_at = time.monotonic()
                await asyncio.sleep(self.tick)
        finally:
            self.stop()  # a loop that ended is not a stalled one

    def watch(self) -> None:
        """Runs in its own thread until stop()."""
        stalled_since: float | None = None
        while not self._stopped.wait(self.tick):
            beat_at = self.beat_at
            silent = time.monotonic() - beat_at
            if silent > self.threshold and stalled_since != beat_at:
                stalled_since = beat_at
                metrics.LOOP_STALLS.inc()
                log.warning("event loop blocked for %.1f s so far, at:\n%s", silent, self.stack())
            elif stalled_since is not None and beat_at != stalled_since:
                log.warning("event loop was blocked for %.1f s", beat_at - stalled_since)
                stalled_since = None

    def stack(self) -> str:
        frame = sys._current_frames().get(self.loop_thread)
        return "".join(traceback.format_stack(frame)) if frame else "(the loop's thread is gone)"

    def stop(self) -> None:
        self._stopped.set()


_watching: list[asyncio.Task[None]] = []  # the loop keeps only a weak reference to a task


def start(threshold: float = 2.0) -> StallWatch:
    """Watch the running loop for the life of the process."""
    watch = StallWatch(threshold)
    _watching.append(asyncio.create_task(watch.heartbeat()))
    threading.Thread(target=watch.watch, name="kenv-stallwatch", daemon=True).start()
    return watch
