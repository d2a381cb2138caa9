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
import ssl
from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx
import yarl


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
            async with asyncio.timeout(None) as sending:
                # aiohttp bounds neither writing a body (its read timeout starts once the body is sent) nor the
                # whole of a connection's setup: a deadline that each chunk sent moves on stands in for httpx's
                # write timeout, as its pool and connect timeouts bound the wait for a connection.
                body = _body(request, _mover(sending, write, read))
                if body is not None and write is not None:
                    sending.reschedule(_after((pool or 0) + (connect or 0) + write + (read or 0)))
                async with self._session().request(
                        request.method, yarl.URL(str(request.url), encoded=True), headers=_headers(request),
                        data=body, allow_redirects=False, compress=None,
                        timeout=aiohttp.ClientTimeout(connect=None if connect is None else connect + (pool or 0),
                                                      sock_connect=connect, sock_read=read)) as answer:
                    sending.reschedule(None)  # the body is sent: reading the answer has its own timeout
                    content = await answer.read()
        except TimeoutError as error:  # aiohttp's read and connect timeouts are TimeoutErrors too
            raise httpx.TimeoutException(f"no answer in time from {request.url.host}", request=request) from error
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(str(error), request=request) from error
        except aiohttp.ClientError as error:
            raise httpx.NetworkError(f"{error.__class__.__name__}: {error}", request=request) from error
        except ValueError as error:  # aiohttp refuses a header value it cannot send (a control character)
            raise httpx.LocalProtocolError(str(error), request=request) from error
        return httpx.Response(answer.status, headers=list(answer.raw_headers), stream=httpx.ByteStream(content),
                              request=request, extensions={"http_version": b"HTTP/1.1",
                                                           "reason_phrase": (answer.reason or "").encode()})

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


def _after(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


def _mover(sending: asyncio.Timeout, write: float | None, read: float | None) -> Callable[[bool], None]:
    """Moves the deadline on as a body is sent: `write` from each chunk, `write` + `read` from the last one."""
    def moved(last: bool) -> None:
        if write is not None:
            sending.reschedule(_after(write + (read or 0) if last else write))
    return moved


def _headers(request: httpx.Request) -> list[tuple[str, str]]:
    """httpx's headers as it would send them (names in their case) but its Transfer-Encoding: aiohttp chunks a
    stream itself and refuses to be told to."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
            if k.lower() != b"transfer-encoding"]


def _body(request: httpx.Request, moved: Callable[[bool], None]) -> bytes | AsyncIterator[bytes] | None:
    """The bytes already in memory as they are; a streamed body (a layer read from a file) as a stream."""
    if isinstance(request.stream, httpx.ByteStream):  # also a redirect's, whose content httpx did not read
        return b"".join(request.stream) or None
    return _chunks(request, moved)


async def _chunks(request: httpx.Request, moved: Callable[[bool], None]) -> AsyncIterator[bytes]:
    stream = request.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:
        moved(False)
        yield chunk
    moved(True)
