"""A minimal Kubernetes API client (hack/localcluster.py bootstraps with it; tests poll and set up with it).

Only stdlib and pyyaml, so it works before the project itself is installed.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.request
from pathlib import Path

import yaml


class KubeAPI:
    """Just enough of a Kubernetes client (stdlib only) for bootstrapping and for tests."""

    def __init__(self, kubeconfig: str | Path):
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"].rstrip("/")
        # Local clusters embed everything (*-data); files and bearer tokens cover most other kubeconfigs.
        def blob(section: dict, key: str) -> bytes:
            inline = section.get(f"{key}-data")
            return base64.b64decode(inline) if inline else Path(section[key]).read_bytes()

        self.ssl = ssl.create_default_context(cadata=blob(cluster, "certificate-authority").decode())
        self.headers = {"Authorization": f"Bearer {user['token']}"} if "token" in user else {}
        if "client-certificate-data" in user or "client-certificate" in user:
            # ssl wants files for the client cert: a private temp dir that lives as long as this object.
            self._tmp = tempfile.TemporaryDirectory(prefix="kenv-kubeapi-")
            crt, key = Path(self._tmp.name, "c.crt"), Path(self._tmp.name, "c.key")
            crt.write_bytes(blob(user, "client-certificate"))
            key.write_bytes(blob(user, "client-key"))
            self.ssl.load_cert_chain(crt, key)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=self.ssl))

    def request(self, method: str, path: str, body=None, content_type="application/json", timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json", **self.headers}
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        with self.opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def text(self, path: str, timeout: float = 30) -> str:
        """A plain-text GET, e.g. a pod's log (which may hold JSON lines that request() would try to parse)."""
        req = urllib.request.Request(self.server + path, headers=self.headers)
        with self.opener.open(req, timeout=timeout) as resp:
            return str(resp.read().decode(errors="replace"))

    def stream(self, path: str, timeout: float):
        """Open a streaming GET (a watch); the caller reads lines and closes it."""
        req = urllib.request.Request(self.server + path, headers=self.headers)
        return self.opener.open(req, timeout=timeout)
