"""Run `kenv operator` as a child process against a cluster (used by `make run` and the tests).

A real process rather than kopf's in-thread runner, so tests can SIGKILL and restart it like a crashed pod.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from localcluster import ensure_no_proxy

BUILD_NAMESPACE = "kenv-system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(self, kubeconfig: str | Path, registry: str, log_path: str | Path, **settings: str) -> None:
        self.kubeconfig = str(kubeconfig)
        self.registry = registry
        self.log_path = Path(log_path)
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.webhook_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "KENV_DESTINATION_REPO": f"{registry}/kenv/environments",
            "KENV_INSECURE_REGISTRIES": registry,
            "KENV_BUILD_NAMESPACE": BUILD_NAMESPACE,
            "KENV_WEBHOOK_PORT": str(self.webhook_port),
            "KENV_METRICS_PORT": str(self.metrics_port),
            "KENV_POLL_SECONDS": "1",
            **{f"KENV_{k.upper()}": v for k, v in settings.items()},
        }
        ensure_no_proxy(self.env)  # the webhook and registry on 127.0.0.1 must not go through a proxy
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "kenv.cli", "operator", "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"operator exited with {self.popen.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"operator not healthy after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, like a node losing the pod: no cleanup handlers run."""
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
