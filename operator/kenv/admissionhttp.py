"""kenv's admissions answered on a lean HTTP/1.1 protocol, with aiohttp behind it for everything else.

Why: an admission's own work is ~0.04 ms (bench/admission_profile.py), but aiohttp's request machinery around it
(request and response objects, the router, header parsing into multidicts, the keep-alive and access-log logic) is
the bulk of the server's CPU, and the API server waits for all of it. Requests arrive a few times a second, each
into a cold process, where a bigger code path costs most: with requests 0.1 s apart, aiohttp answered 0.38 ms
slower than the Go floor webhook, this protocol 0.07 ms (the same AdmissionReview, TLS, one kept-alive connection).

What it answers itself: `POST <path>/<one of kenv's webhooks>[?query] HTTP/1.1` with a Content-Length body of at
most MAX_BODY bytes, no Transfer-Encoding and no Expect, whose JSON is an AdmissionReview the lean path takes
(admission.takes). The API server's webhook client sends exactly that. Anything else (another path or method, a
chunked body, a review kenv leaves to kopf, bytes it cannot parse) is handed to aiohttp with the connection, from
that request on, for good: aiohttp and kopf then answer it as they always have (webhookserver.AdmissionServer).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

from kenv.metrics import ADMISSION_REQUEST_SECONDS

MAX_HEAD = 16 * 1024  # a longer request head goes to aiohttp, which refuses it properly
MAX_BODY = 8 * 1024 * 1024  # an AdmissionReview holds a pod (≤ ~1.5 MiB) twice at most, JSON-escaped
KEEP_ALIVE_SECONDS = 75.0  # aiohttp's keep-alive timeout: an idle connection is closed after it
clock = time.perf_counter  # what requests are timed with (kenv_admission_request_seconds)


@dataclass(frozen=True)
class LeanRequest:
    """One request the lean path can answer: its webhook, where its body lies in the buffer, where it ends."""

    webhook: str
    body_start: int
    end: int
    close: bool  # the client asked for `Connection: close`


# RFC 9110's field: a token, a colon, the value without surrounding spaces or tabs (visible ASCII, spaces, tabs)
HEADER_FIELD = re.compile(
    r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e](?:[ \t\x21-\x7e]*[\x21-\x7e])?)?)[ \t]*")
LENGTH = re.compile(r"[0-9]{1,10}")
INCOMPLETE = "incomplete"  # more bytes are needed to tell
OTHER = "other"  # aiohttp's to answer


def parse_request(buffer: bytes | bytearray, prefix: str, webhooks: Collection[str]) -> LeanRequest | str:
    """The first request in `buffer`: a LeanRequest, INCOMPLETE, or OTHER. `prefix`: the server's URL path
    (no trailing slash); `webhooks`: the ids the lean path answers."""
    head_end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if head_end < 0:
        return INCOMPLETE if len(buffer) < MAX_HEAD else OTHER
    try:
        lines = bytes(buffer[:head_end]).decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return OTHER
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return OTHER
    path = parts[1].split("?", 1)[0]
    webhook = path[len(prefix) + 1:] if path.startswith(f"{prefix}/") else ""
    if webhook not in webhooks:
        return OTHER
    headers: dict[str, str] = {}
    for line in lines[1:]:
        field = HEADER_FIELD.fullmatch(line)
        name = field.group(1).lower() if field else ""
        if not field or name in headers:  # malformed (bare LF, NUL, a space before the colon) or repeated
            return OTHER
        headers[name] = field.group(2)
    length = int(headers["content-length"]) if LENGTH.fullmatch(headers.get("content-length", "")) else -1
    if "transfer-encoding" in headers or "expect" in headers or not 0 <= length <= MAX_BODY:
        return OTHER
    body_start = head_end + 4
    end = body_start + length
    if len(buffer) < end:
        return INCOMPLETE
    close = "close" in (token.strip().lower() for token in headers.get("connection", "").split(","))
    return LeanRequest(webhook, body_start, end, close)


def response_bytes(answer: dict[str, Any], close: bool) -> bytes:
    """A 200 with `answer` as JSON, as aiohttp's json_response sends it (less its Date and Server headers)."""
    body = json.dumps(answer).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode("ascii") + body


class LeanProtocol(asyncio.Protocol):
    """One connection. `answer(webhook, review)` gives the AdmissionReview to send back, or None when the request
    is aiohttp's after all; `fallback()` makes aiohttp's protocol for a connection (its Server); `closing()`: whether
    each answer now closes its connection (draining); `connections`: the open lean connections, for shutdown."""

    def __init__(self, prefix: str, webhooks: Collection[str],
                 answer: Callable[[str, dict[str, Any]], dict[str, Any] | None],
                 fallback: Callable[[], asyncio.Protocol], closing: Callable[[], bool],
                 connections: set[LeanProtocol]) -> None:
        self.prefix, self.webhooks, self.answer, self.fallback = prefix, webhooks, answer, fallback
        self.closing, self.connections = closing, connections
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        # The transport's write buffer is full: no answer is written, nor the connection handed to aiohttp (whose
        # protocol would be told to resume writing without having been told to pause) until it drains.
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connections.add(self)
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None:
            self.transport.resume_reading()
            self._serve()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _serve(self) -> None:
        """Answer the complete requests in the buffer, in order, until one is aiohttp's."""
        while self.transport is not None and not self.transport.is_closing() and not self.writing_paused:
            began = clock()
            request = parse_request(self.buffer, self.prefix, self.webhooks)
            if request == INCOMPLETE:
                return
            answer = self._answer(request) if isinstance(request, LeanRequest) else None
            if answer is None or not isinstance(request, LeanRequest):
                self._hand_off()
                return
            del self.buffer[:request.end]
            close = request.close or self.closing()
            self.transport.write(response_bytes(answer, close))
            ADMISSION_REQUEST_SECONDS.observe(clock() - began)
            if close:
                self.transport.close()
                return
            self._rearm()

    def _answer(self, request: LeanRequest) -> dict[str, Any] | None:
        """The AdmissionReview to send back, or None: aiohttp's path then answers (400 for what is not JSON, 500
        for an error, as it always has). Nothing a request holds may escape into the transport."""
        try:
            review = json.loads(bytes(self.buffer[request.body_start:request.end]))
            return self.answer(request.webhook, review) if isinstance(review, dict) else None
        except Exception:  # noqa: BLE001 - aiohttp's path meets it again and answers it
            return None

    def _hand_off(self) -> None:
        """aiohttp takes this connection from the current request on, with what was read of it."""
        transport, handler = self.transport, self.fallback()
        assert transport is not None
        self._forget()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.buffer:
            handler.data_received(bytes(self.buffer))
        self.buffer.clear()

    def _rearm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(KEEP_ALIVE_SECONDS, self.close)

    def _forget(self) -> None:
        """This protocol no longer serves the connection (closed, or handed to aiohttp)."""
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.connections.discard(self)
        self.transport = None

