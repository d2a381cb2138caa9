"""kopf's webhook server with kenv's lean admission path in front (bench/webhook.py measures both).

kopf serves every webhook through its generic machinery: a handler state, an executor thread for a sync
handler, a deep copy of the pod the patch is applied to and a diff back to JSON Patch. kenv's webhooks need none
of it: given kopf's indexes (the startup handler has them), a request for one of them is answered by
admission.review() on the event loop, with kenv's own JSON Patch. Any other path still goes through kopf. kopf's
handlers (main.py) stay registered: they name the webhooks kopf writes into a managed configuration, and they
are the reference the lean path is tested against (tests/unit/test_admission.py).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp.web
import kopf

from kenv import admission


class AdmissionServer(kopf.WebhookServer):
    def __init__(self, indexes: admission.Indexes | None, **kwargs: Any) -> None:
        """indexes: kopf's live indexes, for the lean path (None: every request goes through kopf)."""
        super().__init__(**kwargs)
        self.indexes = indexes

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
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
