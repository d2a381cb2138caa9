"""How the kernel scheduled a pod's process, read from the host's /proc (the local node's pods are host processes):
time on a CPU, time runnable but waiting for one, how many times it was put on one, and its CPU cgroup's
throttling (a CPU limit's CFS quota). bench/webhook.py compares kenv's admission process with the Go floor's over
its run: a webhook that waits for a CPU more often or longer answers later at the tail, whatever its code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CPU_CGROUPS = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Scheduled:
    """Counters of one process (all its threads) since it started; subtract two for a period."""

    run_ns: int = 0
    wait_ns: int = 0
    slices: int = 0
    throttled_periods: int = 0
    periods: int = 0

    def __sub__(self, other: Scheduled) -> Scheduled:
        return Scheduled(*(a - b for a, b in zip(self.counters(), other.counters(), strict=True)))

    def counters(self) -> tuple[int, ...]:
        return self.run_ns, self.wait_ns, self.slices, self.throttled_periods, self.periods

    def describe(self) -> str:
        per_slice = self.wait_ns / self.slices / 1000 if self.slices else 0.0
        throttling = f"; throttled in {self.throttled_periods} of {self.periods} CFS periods" if self.periods else ""
        return (f"on a CPU {self.run_ns / 1e6:.0f} ms, runnable but waiting {self.wait_ns / 1e6:.0f} ms over "
                f"{self.slices} times put on one ({per_slice:.0f} µs each){throttling}")


def find_pid(*words: str, without: tuple[str, ...] = ()) -> int | None:
    """The one process whose command line holds every word of `words` and none of `without` (None: not one)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [arg.decode(errors="replace") for arg in argv]
        if all(any(word in arg for arg in text) for word in words) and \
                not any(any(word in arg for arg in text) for word in without):
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


def scheduled(pid: int) -> Scheduled | None:
    """The process's counters now: /proc/PID/task/*/schedstat (run, wait, slices) and its CPU cgroup's cpu.stat;
    None once it is gone (a pod restarted). A thread that ended between two readings takes its counters with it,
    so a period's figures undercount a process whose threads come and go (the floor's Go runtime keeps its own)."""
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
        stat = cpu_stat(pid)
    except OSError:
        return None
    run = wait = slices = 0
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # a thread that ended
        run, wait, slices = run + int(fields[0]), wait + int(fields[1]), slices + int(fields[2])
    return Scheduled(run, wait, slices, stat.get("nr_throttled", 0), stat.get("nr_periods", 0))


def cpu_stat(pid: int) -> dict[str, int]:
    """cpu.stat of the process's CPU cgroup (cgroup v1's cpu controller, or the v2 hierarchy's: at the root of
    /sys/fs/cgroup on a v2 host, under unified/ on a hybrid one); {} if unreadable."""
    unified = CPU_CGROUPS if (CPU_CGROUPS / "cgroup.controllers").exists() else CPU_CGROUPS / "unified"
    for line in (PROC / str(pid) / "cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            folder = CPU_CGROUPS / controllers / path.lstrip("/")
        elif hierarchy == "0" and not controllers:
            folder = unified / path.lstrip("/")
        else:
            continue
        try:
            return {key: int(value) for key, value in
                    (row.split() for row in (folder / "cpu.stat").read_text().splitlines())}
        except (OSError, ValueError):
            continue
    return {}
