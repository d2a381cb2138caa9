"""Serve a directory (the conda channel hack/condachannel.py builds) over HTTP or HTTPS, optionally behind HTTP
Basic or bearer-token auth, and record every request so tests can tell what was fetched and with which credentials.

Binds only the address it is given (tests pass the cluster bridge's 10.244.0.1, which pods reach): never all
interfaces. Only stdlib and cryptography (for the throwaway CA, via hack/pki.py).
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pki import cert_pem, issue_cert, key_pem, make_ca

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    user: str | None  # the Basic user or "<token>" for a valid bearer token; None for anonymous or refused


@dataclass(frozen=True)
class TLS:
    ca: Path  # PEM of the CA clients must trust (SSL_CERT_FILE for rattler)
    cert: Path
    key: Path


def make_tls(directory: Path, host: str) -> TLS:
    """A throwaway CA and a server certificate for host (an IP or a DNS name) signed by it, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("kenv conda channel test CA")
    cert, key = issue_cert(ca, host, hosts=(host,))
    tls = TLS(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    tls.ca.write_bytes(cert_pem(ca[0]))
    tls.cert.write_bytes(cert_pem(cert))
    tls.key.write_bytes(key_pem(key))
    tls.key.chmod(0o600)
    return tls


def auth_file(path: Path, host: str, *, user: str | None = None, password: str | None = None,
              token: str | None = None) -> Path:
    """A RATTLER_AUTH_FILE with credentials for host. rattler looks them up by host name WITHOUT the port."""
    entry = {"BearerToken": token} if token else {"BasicHTTP": {"username": user, "password": password}}
    path.write_text(json.dumps({host: entry}))
    path.chmod(0o600)
    return path


class ChannelServer:
    """`with ChannelServer(channel_dir, "127.0.0.1") as server: ... server.url ... server.requests`.

    With user/password and/or token, every request needs matching Basic or Bearer credentials (401 otherwise);
    with tls (make_tls), it serves HTTPS; cache_control: a Cache-Control header for every response (a PyPI-style
    index, hack/pypiindex.py). port 0 picks a free port."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0, *, user: str | None = None,
                 password: str | None = None, token: str | None = None, tls: TLS | None = None,
                 cache_control: str | None = None) -> None:
        if host in WILDCARD_HOSTS:
            raise ValueError(f"refusing to bind {host!r}: give the one address clients use")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.directory, self.host, self.tls = Path(directory), host, tls
        self.cache_control = cache_control  # a Cache-Control header on every response (PyPI sends one)
        self.requests: list[Request] = []
        self._credentials = {"basic": (user, password) if user is not None else None, "token": token}
        self._lock = threading.Lock()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> ChannelServer:
        handler = functools.partial(_Handler, directory=str(self.directory))
        server_class = _IPv6Server if ":" in self.host else _Server
        self._httpd = server_class((self.host, self._port), handler)
        self._httpd.channel = self  # type: ignore[attr-defined]
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            # Handshake in the request's thread, not in accept(): a stalled client must not block the others.
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                     do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"channel-server-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChannelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fetched(self, suffix: str, user: str | None = None) -> bool:
        """Whether a GET for a path ending in suffix succeeded (as user, when given)."""
        return any(r.method == "GET" and r.path.endswith(suffix) and r.status == 200
                   and (user is None or r.user == user) for r in list(self.requests))

    def authorize(self, header: str | None) -> tuple[bool, str | None]:
        """(allowed, who) for an Authorization header value."""
        basic, token = self._credentials["basic"], self._credentials["token"]
        if basic is None and token is None:
            return True, None
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "basic" and basic is not None:
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False, None
            # compare_digest: no timing side channel, even in a test server
            if hmac.compare_digest(user.encode(), basic[0].encode()) and \
                    hmac.compare_digest(password.encode(), basic[1].encode()):
                return True, user
        if scheme.lower() == "bearer" and token is not None and hmac.compare_digest(value.encode(), token.encode()):
            return True, "<token>"
        return False, None

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 is small for rattler's parallel downloads from many pods

    def handle_error(self, request, client_address) -> None:
        pass  # failed TLS handshakes and clients hanging up: the tests look at requests, not tracebacks


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real channels do
    user: str | None = None

    def _allowed(self) -> bool:
        allowed, self.user = self.server.channel.authorize(self.headers.get("Authorization"))  # type: ignore
        if not allowed:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="kenv conda channel"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        return allowed

    def do_GET(self) -> None:
        if self._allowed():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._allowed():
            super().do_HEAD()

    def end_headers(self) -> None:
        if self.server.channel.cache_control:  # type: ignore[attr-defined]
            self.send_header("Cache-Control", self.server.channel.cache_control)  # type: ignore[attr-defined]
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if isinstance(code, int) else 0  # HTTPStatus is an int
        self.server.channel.record(Request(self.command, self.path, status, self.user))  # type: ignore

    def log_message(self, format: str, *args: object) -> None:
        pass  # recorded in ChannelServer.requests instead of printed
