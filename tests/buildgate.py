"""Holding a real build at a known point, so a test can break something while the build pod runs.

The Environment's Dockerfile gets a RUN step that asks an HTTP gate, served by the test on the node address, for
its token; the gate answers only once the test releases that token. So the build pod is really running (base image
pulled, the builder executing a step) while it waits, and it finishes for real once released.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nodeconfig import NODE_IP


class BuildGate:
    def __init__(self, host: str = NODE_IP) -> None:
        self._released: dict[str, threading.Event] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                token = self.path.strip("/")
                event = gate._event(token)
                with gate._lock:
                    gate._waiting.add(token)
                event.wait()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="build-gate", daemon=True)
        self._thread.start()

    def _event(self, token: str) -> threading.Event:
        with self._lock:
            return self._released.setdefault(token, threading.Event())

    def run_step(self, token: str) -> str:
        """A Dockerfile RUN line that blocks until release(token) (python3 is in the test base image)."""
        return (f"RUN python3 -c \"import urllib.request; "
                f"urllib.request.urlopen('{self.url}/{token}', timeout=3600).read()\"")

    def spec(self, base_image: str, token: str) -> dict[str, Any]:
        """A fast build held at the gate: the base image, the gated step and a label unique to the token."""
        dockerfile = f"FROM {base_image}\n{self.run_step(token)}\nLABEL kenv.test={token}"
        return {"docker": {"dockerfile": dockerfile}, "python": {"userManagedDependencies": True}}

    def waiting(self, token: str) -> bool:
        """True once a build has reached the gated step."""
        with self._lock:
            return token in self._waiting

    def release(self, token: str) -> None:
        self._event(token).set()

    def close(self) -> None:
        with self._lock:
            events = list(self._released.values())
        for event in events:
            event.set()
        self.server.shutdown()
        self.server.server_close()
