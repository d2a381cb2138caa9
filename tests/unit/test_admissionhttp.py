"""Which requests the lean admission protocol answers itself (admissionhttp.parse_request) and what it sends.
Served over TLS in front of aiohttp: tests/unit/test_admission.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kenv import admissionhttp
from kenv.admissionhttp import (
    INCOMPLETE,
    MAX_BODY,
    MAX_HEAD,
    OTHER,
    LeanProtocol,
    LeanRequest,
    parse_request,
    response_bytes,
)
from kenv.webhookserver import files_changed

WEBHOOKS = ("inject-environment", "inject-cluster-environment")
BODY = b'{"kind": "AdmissionReview"}'


def request(body: bytes = BODY, line: str = "POST /inject-environment?timeout=10s HTTP/1.1",
            headers: tuple[str, ...] | None = None) -> bytes:
    """A request as the API server's webhook client sends one."""
    if headers is None:
        headers = ("Host: kenv.kenv.svc:443", "User-Agent: kube-apiserver-admission", "Accept: application/json, */*",
                   f"Content-Length: {len(body)}", "Content-Type: application/json", "Accept-Encoding: gzip")
    return "\r\n".join([line, *headers, "", ""]).encode() + body


def test_the_api_servers_request_is_answered_lean() -> None:
    raw = request()
    parsed = parse_request(raw, "", WEBHOOKS)
    assert parsed == LeanRequest("inject-environment", len(raw) - len(BODY), len(raw), close=False)
    assert raw[parsed.body_start:parsed.end] == BODY


def test_a_request_is_incomplete_until_its_whole_body_arrived() -> None:
    raw = request()
    for cut in (0, 10, raw.index(b"\r\n\r\n") + 2, len(raw) - 1):
        assert parse_request(raw[:cut], "", WEBHOOKS) == INCOMPLETE, cut
    assert isinstance(parse_request(raw, "", WEBHOOKS), LeanRequest)


def test_pipelined_requests_are_taken_one_at_a_time() -> None:
    first, second = request(), request(b'{"second": true}', "POST /inject-cluster-environment HTTP/1.1")
    parsed = parse_request(first + second, "", WEBHOOKS)
    assert isinstance(parsed, LeanRequest) and parsed.end == len(first)
    rest = parse_request((first + second)[parsed.end:], "", WEBHOOKS)
    assert isinstance(rest, LeanRequest) and rest.webhook == "inject-cluster-environment"


def test_the_servers_path_prefix_is_honoured() -> None:
    assert isinstance(parse_request(request(line="POST /kenv/inject-environment HTTP/1.1"), "/kenv", WEBHOOKS),
                      LeanRequest)
    assert parse_request(request(), "/kenv", WEBHOOKS) == OTHER


@pytest.mark.parametrize("line", [
    "POST /some-other-webhook HTTP/1.1",  # kopf's
    "POST /inject-environment/extra HTTP/1.1",
    "GET /inject-environment HTTP/1.1",
    "POST /inject-environment HTTP/1.0",
    "POST  /inject-environment HTTP/1.1",
])
def test_other_request_lines_go_to_aiohttp(line: str) -> None:
    assert parse_request(request(line=line), "", WEBHOOKS) == OTHER


@pytest.mark.parametrize("headers", [
    ("Transfer-Encoding: chunked",),
    ("Content-Length: 27", "Transfer-Encoding: chunked"),
    ("Content-Length: 27", "Expect: 100-continue"),
    ("Content-Length: 27", "Content-Length: 27"),  # repeated
    ("Content-Length: -27",),
    ("Content-Length: 27", "Bad header"),
    ("Content-Length: 27", "Bad name : x"),
    (f"Content-Length: {MAX_BODY + 1}",),
    ("Content-Length: " + "1" * 5000,),  # more digits than int() takes
    ("Content-Length: +27",),
    ("Content-Length: 27", ": x"),  # no name
    ("Content-Length: 27", "X: a\nTransfer-Encoding: chunked"),  # a bare LF
    ("Content-Length: 27", "X: a\x00"),
    ("Content-Length: 27\x0b",),
    (),  # no length
])
def test_bodies_it_cannot_frame_simply_go_to_aiohttp(headers: tuple[str, ...]) -> None:
    assert parse_request(request(headers=headers), "", WEBHOOKS) == OTHER


def test_a_head_too_long_or_not_ascii_goes_to_aiohttp() -> None:
    assert parse_request(b"POST /inject-environment HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, "", WEBHOOKS) == OTHER
    assert parse_request(request(headers=("Content-Length: 27", "X: \xe9")).replace(b"\xc3\xa9", b"\xe9"), "",
                         WEBHOOKS) == OTHER


def test_connection_close_is_honoured() -> None:
    parsed = parse_request(request(headers=(f"Content-Length: {len(BODY)}", "Connection: keep-alive, Close")), "",
                           WEBHOOKS)
    assert isinstance(parsed, LeanRequest) and parsed.close


@pytest.mark.parametrize("close", [False, True])
def test_the_answer_is_a_json_200(close: bool) -> None:
    head, _, body = response_bytes({"response": {"allowed": True}}, close).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert f"Content-Length: {len(body)}" in lines and "Content-Type: application/json; charset=utf-8" in lines
    assert ("Connection: close" in lines) == close
    assert json.loads(body) == {"response": {"allowed": True}}


def test_leading_zeros_frame_the_body_as_their_value() -> None:
    raw = request(headers=("Content-Length: 0027",))
    parsed = parse_request(raw, "", WEBHOOKS)
    assert isinstance(parsed, LeanRequest) and parsed.end - parsed.body_start == 27


class Transport:
    """What LeanProtocol uses of a transport, recorded (the real ones are in test_admission.py's TLS tests)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed, self.reading = False, True
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class Aiohttp(asyncio.Protocol):
    """Stands for aiohttp's protocol: what it was handed."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data


def lean_protocol(handed: list[Aiohttp]) -> LeanProtocol:
    def fallback() -> Aiohttp:
        handed.append(Aiohttp())
        return handed[-1]

    return LeanProtocol("", WEBHOOKS, lambda webhook, review: {"webhook": webhook}, fallback, lambda: False, set())


def test_nothing_is_answered_nor_handed_off_while_the_write_buffer_is_full() -> None:
    chunked = request(headers=("Transfer-Encoding: chunked",), body=b"1b\r\n" + BODY + b"\r\n0\r\n\r\n")

    async def scenario() -> None:
        handed: list[Aiohttp] = []
        protocol, transport = lean_protocol(handed), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.pause_writing()
        protocol.data_received(request() + request())
        assert transport.written == [] and not transport.reading
        protocol.resume_writing()
        assert len(transport.written) == 2 and transport.reading
        protocol.pause_writing()
        protocol.data_received(request() + chunked)
        assert len(transport.written) == 2 and handed == []
        protocol.resume_writing()  # the lean one answered, then aiohttp handed the chunked one
        assert len(transport.written) == 3 and transport.protocol is handed[0]
        assert handed[0].transport is transport and handed[0].received == chunked
        protocol.data_received(b"late")  # the transport would send it to aiohttp now: the lean protocol is done
        assert len(transport.written) == 3

    asyncio.run(scenario())


def test_an_idle_connection_is_closed_and_each_answer_rearms_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admissionhttp, "KEEP_ALIVE_SECONDS", 0.2)

    async def scenario() -> tuple[bool, bool, bool]:
        protocol, transport = lean_protocol([]), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        await asyncio.sleep(0.15)
        protocol.data_received(request())
        await asyncio.sleep(0.15)  # 0.3 s after it opened, 0.15 s after the answer
        open_after_answer = not transport.closed
        await asyncio.sleep(0.2)
        closed_when_idle = transport.closed
        protocol.connection_lost(None)
        return open_after_answer, closed_when_idle, protocol.idle is None

    assert asyncio.run(scenario()) == (True, True, True)


def test_the_server_restarts_only_when_its_certificate_files_change(tmp_path: Path) -> None:
    certificate = tmp_path / "tls.crt"
    certificate.write_text("one")

    async def scenario() -> bool:
        watch = asyncio.create_task(files_changed([certificate], 0.01))
        await asyncio.sleep(0.1)
        unchanged_kept_waiting = not watch.done()
        certificate.write_text("two")
        await asyncio.wait_for(watch, 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(files_changed([], 0.01), 0.1)
        return unchanged_kept_waiting

    assert asyncio.run(scenario())


def test_each_answer_is_timed_from_its_last_bytes_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """kenv_admission_request_seconds: from a request's last bytes read (the parse that finds it whole) to its
    answer written; a pipelined request's time starts when the one before it was answered."""
    # one clock reading per parse, one per answer: parse (incomplete), parse + answer, parse + answer, parse
    # (nothing left), parse + answer, parse (nothing left)
    times = iter([1.0, 10.0, 10.5, 10.5, 10.75, 11.0, 20.0, 20.125, 21.0])
    monkeypatch.setattr(admissionhttp, "clock", lambda: next(times))
    seen: list[float] = []
    monkeypatch.setattr(admissionhttp.ADMISSION_REQUEST_SECONDS, "observe", seen.append)

    async def scenario() -> None:
        protocol, transport = lean_protocol([]), Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        raw = request()
        protocol.data_received(raw[:10])  # 1.0: not whole yet, not timed
        protocol.data_received(raw[10:] + request())  # whole at 10.0, answered 10.5; the next 10.5 to 10.75
        protocol.data_received(request())  # 20.0 to 20.125
        assert len(transport.written) == 3

    asyncio.run(scenario())
    assert seen == [0.5, 0.25, 0.125]
