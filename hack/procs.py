"""Processes of the local cluster: start them in their own session, find them again, stop them for sure.

Only stdlib, so it works before the project itself is installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def ensure_no_proxy(env: dict[str, str] | os._Environ = os.environ, hosts: tuple[str, ...] = ()) -> None:
    """Keep local traffic (apiserver -> webhooks, clients -> apiserver, registry) away from any HTTP(S) proxy."""
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(have + [h for h in (*LOOPBACK_HOSTS, *hosts) if h not in have])


def script_output(script: Path) -> str:
    """The last stdout line of one of our build scripts (they print what they built last; progress on stderr)."""
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def proc_start_time(pid: int) -> str | None:
    """Kernel start time of pid, to guard against pid reuse between `up` and `down`; None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def spawn(name: str, argv: list, log_dir: Path, env: dict[str, str] | None = None) -> dict:
    """Start one component with its output in log_dir/NAME.log; the record stop_all() and state files use."""
    with open(log_dir / f"{name}.log", "ab") as log:
        # A new session per component: killpg reaches its children, and it survives the CLI exiting.
        popen = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return {"name": name, "pid": popen.pid, "start": proc_start_time(popen.pid), "popen": popen,
            "argv": [str(a) for a in argv]}


def alive(proc: dict) -> bool:
    if proc.get("popen") is not None:
        return bool(proc["popen"].poll() is None)
    return proc_start_time(proc["pid"]) == proc["start"]


def stop_all(procs: list[dict], timeout: float = 15) -> None:
    """SIGTERM each process group (last started first), SIGKILL what is left, insist they are all gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        for p in reversed(procs):
            if alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p["pid"], sig)
        deadline = time.monotonic() + wait
        while any(alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
    survivors = [f"{p['name']}({p['pid']})" for p in procs if alive(p)]
    if survivors:
        raise RuntimeError(f"processes survived SIGKILL: {survivors}")


def pids_mentioning(text: str) -> Iterator[int]:
    """Processes whose command line contains text (e.g. a state directory), this process excluded."""
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                yield int(entry.name)


def kill_and_wait(pids: list[int], timeout: float = 10) -> list[int]:
    """SIGKILL pids and wait until they are gone; returns those still there after timeout."""
    starts = {pid: proc_start_time(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if starts[pid] is not None and proc_start_time(pid) == starts[pid]]
        time.sleep(0.05)
    return left
