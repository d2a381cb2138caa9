"""Look up a tag's manifest digest with the OCI distribution API (HEAD /v2/<repo>/manifests/<ref>).

A small httpx client (sending with aiohttp: aiohttptransport.py) rather than a library: the Python OCI clients we
found (oras-py) are synchronous and pull whole manifests; we need one async HEAD with the registry's Basic or
Bearer-token challenge, and errors that tell "not there" (None) apart from "could not ask" (RegistryError with a
reason for the condition).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from kenv.aiohttptransport import AiohttpTransport
from kenv.slots import OldestFirst

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFESTS_KEPT = 256  # a few KB each
MAX_REMEMBERED = 512  # Authorizations remembered (RegistryClient.accepted)
TOKEN_SECONDS = 60  # a token's lifetime when its service does not say (the distribution token spec's default)
BASIC_SECONDS = 300  # how long Basic credentials are sent unasked
MAX_REDIRECTS = 5
Body = Callable[[], AsyncIterator[bytes]]  # a request body streamed from its start on each call (a file's chunks)


class RegistryError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # RegistryUnavailable | RegistryAuthFailed


@dataclass(frozen=True)
class ImageName:
    registry: str
    repository: str
    reference: str  # tag or sha256:digest

    @classmethod
    def parse(cls, image: str) -> ImageName:
        name, _, digest = image.partition("@")
        registry, _, rest = name.partition("/")
        if not rest or not ("." in registry or ":" in registry or registry == "localhost"):
            registry, rest = "registry-1.docker.io", name if "/" in name else f"library/{name}"
        repository, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
        return cls(registry, repository, digest or tag)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credentials_key(credentials: Credentials | None) -> str:
    """Names credentials in a cache without holding their password."""
    if credentials is None:
        return ""
    return hashlib.sha256(f"{credentials.username}\0{credentials.password}".encode()).hexdigest()


def credentials_for(registry: str, docker_config: dict[str, Any] | None) -> Credentials | None:
    """Find the registry's entry in a dockerconfigjson document (auth, or username/password)."""
    for address, entry in (docker_config or {}).get("auths", {}).items():
        host = re.sub(r"^https?://", "", address).split("/", 1)[0]
        if host != registry:
            continue
        if entry.get("auth"):
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(username, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    return None


def docker_credentials(registry: str) -> Credentials | None:
    """The registry's entry in the user's docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json)."""
    path = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        return credentials_for(registry, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


# Requests in flight at once to one registry. A pool scanning every waiting request whenever a connection changes
# state (httpx's own did) makes a thousand reconciles queueing there at once (a burst of new Environments) cost
# more CPU in the scan than in the requests; waiting here costs nothing (bench/reconcile.py), and the oldest one goes
# first (slots.py). Per registry, so a slow one (a base image's, watched for moves) never holds up lookups in
# another.
MAX_REQUESTS_PER_REGISTRY = 16


class RegistryClient:
    def __init__(self, insecure_registries: list[str] | None = None, ca_file: str | None = None,
                 timeout: float = 10.0) -> None:
        self.insecure = set(insecure_registries or [])
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else None  # None: httpx's CAs (certifi's)
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=True, trust_env=False,
                                      transport=AiohttpTransport(verify))
        self.slots: dict[str, OldestFirst] = {}
        # Manifests looked up with keep=True, by (registry, repository, digest): content-addressed, so never
        # stale; a version tag made right after the lookup (the common new version) PUTs it without a GET.
        self.manifests: OrderedDict[tuple[str, str, str], tuple[str, bytes]] = OrderedDict()
        # The Authorization a registry last accepted, per repository, actions and credentials: sent first, so a
        # token registry is asked once per token, not once per request, and an upload is not sent twice.
        self.accepted: dict[tuple[str, str, str, str], tuple[str, float]] = {}  # key: (header, until)

    def _slot(self, url: str) -> OldestFirst:
        host = httpx.URL(url).netloc.decode()
        return self.slots.setdefault(host, OldestFirst(MAX_REQUESTS_PER_REGISTRY))

    async def close(self) -> None:
        await self.http.aclose()

    def base_url(self, registry: str) -> str:
        scheme = "http" if registry in self.insecure else "https"
        return f"{scheme}://{registry}"

    async def digest(self, image: str, credentials: Credentials | None = None, keep: bool = False) -> str | None:
        """The manifest digest of `image`, None if the registry says it does not exist. keep: GET the manifest
        and remember it for a tag() of it (one request instead of two); otherwise a HEAD, which registries such
        as Docker Hub do not count as a pull."""
        name = ImageName.parse(image)
        url = f"{self.base_url(name.registry)}/v2/{name.repository}/manifests/{name.reference}"
        response = await self.authorized("GET" if keep else "HEAD", url, {"Accept": MANIFEST_TYPES}, name,
                                         credentials, "pull")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest")
        if keep and response.content:
            computed = "sha256:" + hashlib.sha256(response.content).hexdigest()
            if digest in (None, computed):  # kept only as the very bytes the digest names
                digest = computed
                self._keep((name.registry, name.repository, digest),
                           response.headers.get("Content-Type", OCI_MANIFEST), response.content)
        if not digest:
            raise RegistryError("RegistryUnavailable", f"{name.registry} gave no Docker-Content-Digest header")
        return digest

    def _keep(self, key: tuple[str, str, str], media_type: str, manifest: bytes) -> None:
        self.manifests[key] = (media_type, manifest)
        self.manifests.move_to_end(key)
        while len(self.manifests) > MAX_MANIFESTS_KEPT:
            self.manifests.popitem(last=False)

    async def tag(self, image: str, tag: str, credentials: Credentials | None = None) -> None:
        """Give the manifest `repo@sha256:...` the tag `tag` in the same repository (GET it, PUT it back)."""
        name = ImageName.parse(image)
        base = f"{self.base_url(name.registry)}/v2/{name.repository}/manifests"
        kept = self.manifests.get((name.registry, name.repository, name.reference))
        if kept is None:
            got = await self.authorized("GET", f"{base}/{name.reference}", {"Accept": MANIFEST_TYPES}, name,
                                        credentials, "pull")
            if got.status_code != 200:
                raise RegistryError("RegistryUnavailable", f"{name.registry} answered HTTP {got.status_code} "
                                    f"for {name.repository}@{name.reference}")
            kept = got.headers.get("Content-Type", OCI_MANIFEST), got.content
        media_type, manifest = kept
        put = await self.authorized("PUT", f"{base}/{tag}", {"Content-Type": media_type}, name, credentials,
                                    "pull,push", content=manifest)
        if put.status_code not in (200, 201):
            raise RegistryError("RegistryUnavailable", f"{name.registry} refused tag {tag} of {name.repository} "
                                f"(HTTP {put.status_code})")

    async def untag(self, image: str, credentials: Credentials | None = None) -> bool:
        """Delete the tag of `repo:tag`, leaving the manifest to its other tags (OCI distribution 1.1 tag
        deletion). False when the registry cannot delete tags (e.g. distribution 2.x): the tag stays."""
        name = ImageName.parse(image)
        url = f"{self.base_url(name.registry)}/v2/{name.repository}/manifests/{name.reference}"
        try:
            response = await self.authorized("DELETE", url, {}, name, credentials, "pull,push,delete")
        except RegistryError as error:
            if error.reason == "RegistryAuthFailed":
                return False  # credentials that may push but not delete: the tag stays
            raise
        return response.status_code in (200, 202, 404)

    async def authorized(self, method: str, url: str, headers: dict[str, str], name: ImageName,
                         credentials: Credentials | None, actions: str,
                         content: bytes | Body | None = None) -> httpx.Response:
        """content: bytes, or a function giving the body's chunks afresh for each send (a file streamed)."""
        key = (name.registry, name.repository, actions, credentials_key(credentials))
        # The remembered Authorization goes to the registry's own host only (an upload Location may be another).
        known = self._remembered(key) if httpx.URL(url).netloc.decode() == name.registry else None
        response = await self._request(url, {**headers, "Authorization": known} if known else headers, method,
                                       content)
        if known and response.status_code in (401, 403):  # a token expired or revoked: ask afresh, once
            self.accepted.pop(key, None)
            if response.status_code == 403:  # no challenge in it: the registry's 401 has one
                response = await self._request(url, headers, method, content)
        if response.status_code == 401:
            authorization, lifetime = await self._authorization(response, name, credentials, actions)
            response = await self._request(url, {**headers, "Authorization": authorization}, method, content)
            if response.status_code not in (401, 403):
                self._remember(key, authorization, lifetime)
        if response.status_code in (401, 403):
            raise RegistryError("RegistryAuthFailed", f"{name.registry} refused the credentials for "
                                f"{name.repository} (HTTP {response.status_code})")
        return response

    def _remembered(self, key: tuple[str, str, str, str]) -> str | None:
        found = self.accepted.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def _remember(self, key: tuple[str, str, str, str], authorization: str, lifetime: float) -> None:
        if len(self.accepted) >= MAX_REMEMBERED:  # many repositories or rotating credentials: start again
            self.accepted.clear()
        self.accepted[key] = (authorization, time.monotonic() + lifetime)

    async def _request(self, url: str, headers: dict[str, str], method: str = "HEAD",
                       content: bytes | Body | None = None) -> httpx.Response:
        try:
            async with self._slot(url):
                if not callable(content):
                    return await self.http.request(method, url, headers=headers, content=content)
                return await self._stream(method, url, headers, content)
        except (httpx.HTTPError, httpx.StreamError) as error:
            raise RegistryError("RegistryUnavailable", f"cannot reach {url.split('/v2/')[0]}: "
                                f"{error.__class__.__name__} {error}".strip()) from error

    async def _stream(self, method: str, url: str, headers: dict[str, str], content: Body) -> httpx.Response:
        """Send a streamed body, following redirects by sending it again from its start (httpx cannot: the
        stream is spent); Authorization goes to the first host only."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.http.request(method, url, headers=headers, content=content(),
                                               follow_redirects=False)
            location = response.headers.get("Location")
            if response.status_code not in (307, 308) or not location:
                return response
            target = urljoin(url, location)
            if httpx.URL(target).netloc != httpx.URL(url).netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError("RegistryUnavailable", f"{url.split('/v2/')[0]} redirected an upload more than "
                            f"{MAX_REDIRECTS} times")

    async def _authorization(self, challenge: httpx.Response, name: ImageName,
                             credentials: Credentials | None, actions: str = "pull") -> tuple[str, float]:
        """The Authorization a 401's challenge asks for, and for how many seconds to send it unasked."""
        scheme, params = parse_challenge(challenge.headers.get("WWW-Authenticate", ""))
        basic = None
        if credentials:
            basic = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        if scheme == "basic":
            if not basic:
                raise RegistryError("RegistryAuthFailed", f"{name.registry} needs credentials and none are set")
            return f"Basic {basic}", BASIC_SECONDS
        query = {"service": params.get("service", ""), "scope": f"repository:{name.repository}:{actions}"}
        try:
            async with self._slot(params["realm"]):
                token_response = await self.http.get(
                    params["realm"], params=query, headers={"Authorization": f"Basic {basic}"} if basic else {}
                )
        except (KeyError, httpx.HTTPError) as error:
            raise RegistryError("RegistryUnavailable", f"token service of {name.registry} failed: {error}") from error
        if token_response.status_code != 200:  # a 5xx is the service failing, not the credentials
            reason = "RegistryUnavailable" if token_response.status_code >= 500 else "RegistryAuthFailed"
            raise RegistryError(reason, f"token service of {name.registry} answered "
                                        f"HTTP {token_response.status_code}")
        body = token_response.json()
        lifetime = body.get("expires_in") if isinstance(body.get("expires_in"), int | float) else TOKEN_SECONDS
        return f"Bearer {body.get('token') or body.get('access_token')}", max(0.0, float(lifetime) - 10)
