"""kopf's webhook server with kenv's lean admission path in front (bench/webhook.py measures both).

kopf serves every webhook through its generic machinery: a handler state, an executor thread for a sync
handler, a deep copy of the pod the patch is applied to and a diff back to JSON Patch. kenv's webhooks need none
of it: given kopf's indexes (the startup handler has them), a request for one of them is answered by
admission.review() on the event loop, with kenv's own JSON Patch. Any other path still goes through kopf. kopf's
handlers (main.py) stay registered: they name the webhooks kopf writes into a managed configuration, and they
are the reference the lean path is tested against (tests/unit/test_admission.py).

Draining: the API server keeps reusing its kept-alive connections to a replica being deleted, past the endpoint
update, and a connection closed under a request in flight refuses that pod (EOF). So from the preStop hook on
(`kenv drain` sends roles.DRAIN_SIGNAL), every answer carries `Connection: close`: the API server drops each
connection as it uses it and opens new ones to the replicas that stay.

Access log: aiohttp logs each request it serves at INFO, and kopf's logging (INFO unless quiet) lets it through:
a line per pod admitted, which costs the admission more CPU than kenv's answer does (bench/webhook.py). kenv logs
its refusals itself; quiet_access_log() keeps aiohttp's lines for debug logging (`kenv operator -v`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp.web
import kopf

from kenv import admission

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
        except ValueError as error:
            raise aiohttp.web.HTTPBadRequest(reason=f"not an AdmissionReview: {error}") from error
        if not isinstance(data, dict):
            raise aiohttp.web.HTTPBadRequest(reason="not an AdmissionReview: expected a JSON object")
        if not admission.takes(data):
            return await kopf.WebhookServer._serve(fn, request)  # aiohttp keeps the body it read
        return aiohttp.web.json_response(admission.review(webhook, data, self.indexes))
