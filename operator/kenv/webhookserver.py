"""kopf's webhook server with kenv's lean admission path in front (bench/webhook.py measures both).

kopf serves every webhook through its generic machinery: a handler state, an executor thread for a sync
handler, a deep copy of the pod the patch is applied to and a diff back to JSON Patch. kenv's webhooks need none
of it: given kopf's indexes (the startup handler has them), a request for one of them is answered by
admission.review() on the event loop, with kenv's own JSON Patch. Any other path still goes through kopf. kopf's
handlers (main.py) stay registered: they name the webhooks kopf writes into a managed configuration, and they
are the reference the lean path is tested against (tests/unit/test_admission.py).

Nor do those answers need aiohttp's request machinery: each connection is taken first by admissionhttp's lean
protocol, which answers them itself and hands any other request (and the connection from then on) to aiohttp,
whose `_serve` below answers kenv's webhooks just the same and sends the rest to kopf. The serving loop is kopf's
(`WebhookServer.__call__`: its socket options, client configuration, a restart when the certificate files
change) with that protocol in front.

Draining: the API server keeps reusing its kept-alive connections to a replica being deleted, past the endpoint
update, and a connection closed under a request in flight refuses that pod (EOF). So from the preStop hook on
(`kenv drain` sends roles.DRAIN_SIGNAL), every answer carries `Connection: close`: the API server drops each
connection as it uses it and opens new ones to the replicas that stay.

Access log: aiohttp logs each request it serves at INFO, and kopf's logging (INFO unless quiet) lets it through;
on a connection handed to aiohttp that is a line per pod admitted, which costs more CPU than kenv's answer.
kenv logs its refusals itself; quiet_access_log() keeps aiohttp's lines for debug logging (`kenv operator -v`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf

from kenv import admission
from kenv.admissionhttp import LeanProtocol

log = logging.getLogger(__name__)


class Drain:
    """Whether this process is draining (set once: a replica that drains is being deleted)."""

    def __init__(self) -> None:
        self.draining = False

    def begin(self) -> None:
        if not self.draining:
            log.info("draining: every admission answer now closes its connection")
        self.draining = True

    def answer(self, response: aiohttp.web.StreamResponse) -> aiohttp.web.StreamResponse:
        if self.draining:
            response.force_close()  # aiohttp then sends `Connection: close` and closes after the answer
        return response


DRAIN = Drain()
ACCESS_LOGGER = "aiohttp.access"


def quiet_access_log(verbose: bool) -> None:
    """After kopf.configure(): aiohttp's line per request only with `verbose` (see the module's docstring)."""
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if verbose else logging.WARNING)


class AdmissionServer(kopf.WebhookServer):
    def __init__(self, indexes: admission.Indexes | None, **kwargs: Any) -> None:
        """indexes: kopf's live indexes, for the lean path (None: every request goes through kopf)."""
        super().__init__(**kwargs)
        self.indexes = indexes

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        """kopf's serving loop with the lean protocol taking each connection first (see the module's docstring)."""

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            return await self._serve(fn, request)

        while True:
            cadata, context = self._build_ssl()
            prefix = self.path.rstrip("/") if self.path else ""
            app = aiohttp.web.Application()
            app.add_routes([aiohttp.web.post(f"{prefix}/{{id:.*}}", serve)])
            runner = aiohttp.web.AppRunner(app, handle_signals=False)
            await runner.setup()
            fallback, connections = runner.server, set[LeanProtocol]()
            assert fallback is not None  # set up above
            try:
                port = self.port or self._allocate_free_port()
                server = await asyncio.get_running_loop().create_server(
                    functools.partial(LeanProtocol, prefix, admission.WEBHOOKS, self._kenv_answer, fallback,
                                      lambda: DRAIN.draining, connections),
                    self.addr or None, port, ssl=context, reuse_port=True, reuse_address=True,
                    backlog=128)  # aiohttp's TCPSite's
                try:
                    host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
                    config = kopf.WebhookClientConfig(
                        url=self._build_url("http" if context is None else "https", host, port, self.path or ""))
                    if cadata is not None:
                        config["caBundle"] = base64.b64encode(cadata).decode("ascii")
                    yield config
                    paths = [path for path in (self.certfile, self.pkeyfile, self.cafile) if path is not None]
                    await files_changed(paths, self.file_check_interval)
                    log.info("the webhook's certificate files changed: serving again with them")
                finally:
                    server.close()
                    for connection in list(connections):
                        connection.close()
            finally:
                await runner.cleanup()

    def _kenv_answer(self, webhook: str, review: dict[str, Any]) -> dict[str, Any] | None:
        """kenv's answer to an AdmissionReview for one of its webhooks, on either protocol, or None when kopf's
        machinery answers it (a review admission.takes not)."""
        if self.indexes is None or not admission.takes(review):
            return None
        return admission.review(webhook, review, self.indexes)

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:  # type: ignore[override]
        try:
            return DRAIN.answer(await self._answer(fn, request))
        except aiohttp.web.HTTPException as error:
            if not DRAIN.draining:
                raise
            return DRAIN.answer(aiohttp.web.Response(status=error.status, reason=error.reason, text=error.text))

    async def _answer(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        webhook = request.match_info.get("id") or ""
        if self.indexes is None or webhook not in admission.WEBHOOKS:
            return await kopf.WebhookServer._serve(fn, request)
        try:
            data = json.loads(await request.read())
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            raise aiohttp.web.HTTPBadRequest(reason=f"not an AdmissionReview: {error}") from error
        if not isinstance(data, dict):
            raise aiohttp.web.HTTPBadRequest(reason="not an AdmissionReview: expected a JSON object")
        answer = self._kenv_answer(webhook, data)
        if answer is None:
            return await kopf.WebhookServer._serve(fn, request)  # aiohttp keeps the body it read
        return aiohttp.web.json_response(answer)


async def files_changed(paths: Sequence[str | os.PathLike[str]], interval: float) -> None:
    """Return once the files at `paths` read differently (never, for none). Mounted Secrets change without
    filesystem events, so they are read again every `interval` seconds, as kopf does."""

    def digest() -> bytes:
        hasher = hashlib.sha256()
        for path in paths:
            hasher.update(Path(path).read_bytes())
        return hasher.digest()

    first = digest()
    while True:
        await asyncio.sleep(interval)
        if paths and digest() != first:
            return
