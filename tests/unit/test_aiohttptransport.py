"""aiohttptransport.AiohttpTransport against a small HTTP server, side by side with httpx's own transport: the
same requests give the same answers (status, headers, decoded body), bodies in memory and streamed arrive whole,
httpx still follows redirects, and failures are httpx's errors, which the registry client turns into
RegistryUnavailable."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kenv.aiohttptransport import AiohttpTransport
from kenv.registry import RegistryClient, RegistryError

MANIFEST = b'{"schemaVersion": 2, "layers": []}'


class Server:
    """Echoes what it received; serves a gzip-encoded answer, a redirect and a slow answer."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.released = asyncio.Event()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"method": request.method, "headers": dict(request.headers), "body": body,
                              "query": dict(request.query), "raw_path": request.raw_path,
                              "names": [name for name, _ in request.raw_headers]})
        return web.Response(status=201, body=hashlib.sha256(body).hexdigest().encode(),
                            headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                                     "X-Twice": "a"})

    async def manifest(self, request: web.Request) -> web.Response:
        if request.match_info["reference"] == "missing":
            return web.Response(status=404)
        return web.Response(body=MANIFEST, content_type="application/vnd.oci.image.manifest.v1+json",
                            headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(MANIFEST).hexdigest()})

    async def challenge(self, _: web.Request) -> web.Response:
        answer = web.Response(status=401)
        answer.headers.add("WWW-Authenticate", 'Bearer realm="http://a/token"')
        answer.headers.add("WWW-Authenticate", 'Basic realm="b"')
        return answer

    async def stalled(self, _: web.Request) -> web.Response:
        await asyncio.wait_for(self.released.wait(), 30)  # reads nothing of the upload until released
        return web.Response(status=201)

    async def zipped(self, _: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"plain text " * 50), headers={"Content-Encoding": "gzip"})

    async def moved(self, _: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/v2/r/manifests/latest")

    async def slow(self, _: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")


def serve(scenario: Callable[[str, Server], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        fake = Server()
        app = web.Application()
        app.router.add_route("*", "/echo", fake.echo)
        app.router.add_get("/v2/r/manifests/{reference}", fake.manifest)
        app.router.add_put("/v2/r/manifests/{reference}", fake.echo)
        app.router.add_get("/zipped", fake.zipped)
        app.router.add_get("/moved", fake.moved)
        app.router.add_get("/slow", fake.slow)
        app.router.add_get("/challenge", fake.challenge)
        app.router.add_put("/stalled", fake.stalled)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            return await scenario(str(server.make_url("")).rstrip("/"), fake)
        finally:
            await server.close()
    return asyncio.run(main())


def both_clients(**kwargs: Any) -> dict[str, httpx.AsyncClient]:
    return {"aiohttp": httpx.AsyncClient(transport=AiohttpTransport(), trust_env=False, **kwargs),
            "httpx": httpx.AsyncClient(trust_env=False, **kwargs)}


def test_answers_are_the_same_as_httpx_own_transport_gives() -> None:
    async def scenario(base: str, fake: Server) -> dict[str, list[Any]]:
        seen: dict[str, list[Any]] = {}
        for name, client in both_clients(follow_redirects=True).items():
            async with client:
                answers = [await client.get(f"{base}/v2/r/manifests/latest", headers={"Accept": "a/b"}),
                           await client.head(f"{base}/v2/r/manifests/latest"),
                           await client.get(f"{base}/v2/r/manifests/missing"),
                           await client.get(f"{base}/zipped"),
                           await client.get(f"{base}/moved"),
                           await client.get(f"{base}/challenge"),
                           await client.get(f"{base}/echo?token=a%2Fb%3Ac%7E&scope=repository%3Ar%3Apull")]
            seen[name] = [(a.status_code, a.headers.get("Content-Type"), a.headers.get("Docker-Content-Digest"),
                           a.headers.get_list("WWW-Authenticate"), a.content, str(a.url)) for a in answers]
            seen[name].append(fake.received[-1]["raw_path"])
        return seen

    seen = serve(scenario)
    assert seen["aiohttp"] == seen["httpx"]
    manifest, head, missing, zipped, moved, challenge, _, raw_path = seen["aiohttp"]
    assert (manifest[0], manifest[4]) == (200, MANIFEST)
    assert (head[0], head[4], head[2]) == (200, b"", manifest[2])  # a HEAD: the digest, no body
    assert missing[0] == 404
    assert zipped[4] == b"plain text " * 50  # decoded by httpx, as from its own transport
    assert moved[4] == MANIFEST and moved[5].endswith("/v2/r/manifests/latest")  # redirect followed by httpx
    assert challenge[3] == ['Bearer realm="http://a/token"', 'Basic realm="b"']  # both, in order
    assert raw_path == "/echo?token=a%2Fb%3Ac%7E&scope=repository%3Ar%3Apull"  # the query's bytes as httpx sends


def test_bodies_in_memory_and_streamed_arrive_whole_with_their_headers() -> None:
    chunks = [bytes([n]) * 70_000 for n in range(5)]

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            await asyncio.sleep(0)
            yield chunk

    async def scenario(base: str, fake: Server) -> tuple[list[httpx.Response], list[dict[str, Any]]]:
        async with httpx.AsyncClient(transport=AiohttpTransport(), trust_env=False) as client:
            return [await client.put(f"{base}/v2/r/manifests/v1", content=MANIFEST,
                                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}),
                    await client.put(f"{base}/echo?digest=sha256:x", content=stream()),
                    await client.put(f"{base}/echo", content=stream(), headers={"Content-Length": str(350_000)}),
                    await client.post(f"{base}/echo")], fake.received

    answers, received = serve(scenario)
    assert [a.status_code for a in answers] == [201, 201, 201, 201]
    tagged, chunked, sized, empty = received
    assert tagged["body"] == MANIFEST and tagged["headers"]["Content-Type"] == \
        "application/vnd.oci.image.manifest.v1+json" and tagged["headers"]["Content-Length"] == str(len(MANIFEST))
    assert chunked["body"] == b"".join(chunks) and chunked["headers"].get("Transfer-Encoding") == "chunked"
    assert chunked["query"] == {"digest": "sha256:x"}
    assert sized["body"] == b"".join(chunks) and sized["headers"]["Content-Length"] == "350000"
    assert empty["body"] == b"" and "Content-Type" not in empty["headers"]  # nothing added that httpx did not send
    assert b"Content-Type" in tagged["names"]  # a header's name goes out as httpx would send it
    assert answers[0].headers["X-Twice"] == "a" and answers[0].text == hashlib.sha256(MANIFEST).hexdigest()


def closed_port() -> int:
    """A port nothing listens on: bound, then let go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_failures_are_httpx_errors_and_a_stalled_upload_times_out() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(4096):  # 256 MiB: far more than the sockets' buffers hold
            yield b"x" * 65536

    async def scenario(base: str, fake: Server) -> list[type[BaseException]]:
        raised = []
        async with httpx.AsyncClient(transport=AiohttpTransport(), trust_env=False,
                                     timeout=httpx.Timeout(5, read=0.3, write=0.5)) as client:
            for url in (f"{base}/slow", f"http://127.0.0.1:{closed_port()}/nothing-listens"):
                with pytest.raises(httpx.HTTPError) as caught:
                    await client.get(url)
                raised.append(type(caught.value))
            with pytest.raises(httpx.HTTPError) as caught:
                await client.get(f"{base}/echo", headers={"Authorization": "Bearer a\r\nInjected: yes"})
            raised.append(type(caught.value))
            with pytest.raises(httpx.HTTPError) as caught:  # the server answers only once released
                await client.put(f"{base}/stalled", content=endless())
            fake.released.set()
            raised.append(type(caught.value))
            return raised

    late, refused, bad_header, stalled = serve(scenario)
    assert issubclass(late, httpx.TimeoutException)
    assert issubclass(refused, httpx.ConnectError)
    assert issubclass(bad_header, httpx.LocalProtocolError)  # as httpx's own transport refuses it
    assert issubclass(stalled, httpx.TimeoutException)


def test_no_read_timeout_lets_a_slow_answer_to_an_upload_come() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"layer"

    async def scenario(base: str, fake: Server) -> int:
        async with httpx.AsyncClient(transport=AiohttpTransport(), trust_env=False,
                                     timeout=httpx.Timeout(5, read=None, write=0.2)) as client:
            asyncio.get_running_loop().call_later(1, fake.released.set)  # answers 1 s after the body: past write
            return (await client.put(f"{base}/stalled", content=chunks())).status_code

    assert serve(scenario) == 201


def test_the_registry_client_looks_up_and_tags_through_it() -> None:
    async def scenario(base: str, fake: Server) -> tuple[str | None, str | None, str]:
        host = base.removeprefix("http://")
        registry = RegistryClient([host])
        assert isinstance(registry.http._transport, AiohttpTransport)  # noqa: SLF001 - what production sends with
        try:
            found = await registry.digest(f"{host}/r:latest", keep=True)
            missing = await registry.digest(f"{host}/r:missing")
            await registry.tag(f"{host}/r@{found}", "v1")
            with pytest.raises(RegistryError) as refused:
                await registry.digest(f"127.0.0.1:{closed_port()}/r:latest")
        finally:
            await registry.close()
        assert fake.received[-1]["body"] == MANIFEST  # the PUT of the tag carried the manifest looked up
        return found, missing, refused.value.reason

    found, missing, reason = serve(scenario)
    assert found == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert missing is None
    assert reason == "RegistryUnavailable"
