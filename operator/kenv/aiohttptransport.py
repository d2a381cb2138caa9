"""An httpx transport that sends requests with aiohttp.

The registry client speaks httpx (its tests swap in httpx.MockTransport), but httpx's own transport (httpcore on
anyio) spent 3.2-4.4 ms of CPU per registry request here against 1.1-1.4 ms this way (a GET and a PUT of a
manifest, 16 at a time, against the local registry). In a burst of new Environments the operator's one event
loop made two registry requests per Environment, so that CPU was most of the time each one waited. aiohttp is
already there (kopf and the Kubernetes client use it). This transport leaves redirects, authentication, cookies
and decoding to httpx, as its own transport does: aiohttp sends the bytes as httpx would and hands back the raw
answer.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl

# What HTTP/1.1 allows in no header (h11, behind httpx's own transport, refuses them too)
FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, verify: ssl.SSLContext | None = None) -> None:
        # The CAs httpx's own transport trusts (certifi's) unless given a context.
        self.verify = verify or httpx.create_ssl_context(trust_env=False)
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self.session is None or self.session.closed or self.loop is not loop:  # one per event loop
            self.session, self.loop = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.verify), auto_decompress=False, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("Accept-Encoding", "User-Agent",
                                                                         "Content-Type")), loop
        return self.session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        connect, pool, read, write = (timeouts.get(k) for k in ("connect", "pool", "read", "write"))
        try:
            async with asyncio.timeout(None) as timer:
                deadline = SendDeadline(timer, write, read)
                body = _body(request, deadline)
                if body is not None:
                    deadline.start(_total(pool, connect))
                async with self._session().request(
                        request.method, yarl.URL(str(request.url), encoded=True), headers=_headers(request),
                        data=body, allow_redirects=False, compress=None,
                        timeout=aiohttp.ClientTimeout(connect=_total(connect, pool), sock_connect=connect,
                                                      sock_read=read)) as answer:
                    deadline.answered()
                    content = await answer.read()
        except TimeoutError as error:  # aiohttp's read and connect timeouts are TimeoutErrors too
            raise httpx.TimeoutException(f"no answer in time from {request.url.host}", request=request) from error
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(str(error), request=request) from error
        except aiohttp.ClientError as error:
            raise httpx.NetworkError(f"{error.__class__.__name__}: {error}", request=request) from error
        return httpx.Response(answer.status, headers=list(answer.raw_headers), stream=httpx.ByteStream(content),
                              request=request, extensions={"http_version": b"HTTP/1.1",
                                                           "reason_phrase": (answer.reason or "").encode()})

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


class SendDeadline:
    """httpx's write timeout, which aiohttp has not (its read timeout starts once the body is sent, so an upload to
    a registry that stops reading would wait for good): a deadline `write` after each chunk, `write` + `read`
    after the last one (the answer may take that long), none once the answer started. A None timeout (no limit)
    sets none."""

    def __init__(self, timer: asyncio.Timeout, write: float | None, read: float | None) -> None:
        self.timer, self.write, self.read = timer, write, read
        self.answering = False

    def start(self, connecting: float | None) -> None:
        """Before a body is sent: connecting (httpx's pool and connect timeouts), then sending it whole."""
        self._set(_total(connecting, self.write, self.read))

    def sent(self, last: bool) -> None:
        if not self.answering:  # an answer can start before the whole body is sent (an early 401)
            self._set(_total(self.write, self.read) if last else self.write)

    def answered(self) -> None:
        self.answering = True
        self.timer.reschedule(None)  # reading the answer has its own timeout

    def _set(self, seconds: float | None) -> None:
        self.timer.reschedule(None if seconds is None else asyncio.get_running_loop().time() + seconds)


def _total(*seconds: float | None) -> float | None:
    """The sum of timeouts, None (no limit) if any is."""
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)


def _headers(request: httpx.Request) -> list[tuple[str, str]]:
    """httpx's headers as it would send them (names in their case) but its Transfer-Encoding: aiohttp chunks a
    stream itself and refuses to be told to. A control character in one (a token a registry sent with a line
    break) is refused as httpx's own transport refuses it, before aiohttp raises a bare ValueError."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
               if k.lower() != b"transfer-encoding"]
    for name, value in headers:
        if FORBIDDEN.search(name) or FORBIDDEN.search(value):
            raise httpx.LocalProtocolError(f"header {name} holds a control character", request=request)
    return headers


def _body(request: httpx.Request, deadline: SendDeadline) -> bytes | AsyncIterator[bytes] | None:
    """The bytes already in memory as they are; a streamed body (a layer read from a file) as a stream."""
    if isinstance(request.stream, httpx.ByteStream):  # also a redirect's, whose content httpx did not read
        return b"".join(request.stream) or None
    return _chunks(request, deadline)


async def _chunks(request: httpx.Request, deadline: SendDeadline) -> AsyncIterator[bytes]:
    stream = request.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:
        deadline.sent(last=False)
        yield chunk
    deadline.sent(last=True)
