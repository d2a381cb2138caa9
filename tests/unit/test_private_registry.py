"""A base image relative to docker.baseImageRegistry.address (Azure ML's guide: `team/img:1.2` or
`/team/img:1.2` with base_image_registry.address) is pulled from that address: by the build, by base image
tracking, and checked the same way by pydantic and the CRD's CEL rules."""

from __future__ import annotations

import datetime
import logging
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from pydantic import ValidationError

from kenv import builds, tracking
from kenv.crd import build_crd
from kenv.errors import describe_validation_error
from kenv.models import EnvironmentSpec, registry_host, spec_from_body
from kenv.refs import EnvironmentRef
from kenv.registry import Credentials
from kenv.render import render_context

ACR = {"address": "myacr.azurecr.io", "secretName": "acr-pull"}


def docker(image: str, registry: dict | None = ACR) -> dict:
    return {"docker": {"baseImage": image, **({"baseImageRegistry": registry} if registry else {})}}


def error_of(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        spec_from_body(body)
    return describe_validation_error(info.value)


@pytest.mark.parametrize(("image", "host"), [
    ("team/img:1.2", None), ("/team/img:1.2", None), ("python:3.11", None), ("python", None),
    ("myacr.azurecr.io/team/img:1.2", "myacr.azurecr.io"), ("/myacr.azurecr.io/img", "myacr.azurecr.io"),
    ("localhost/img", "localhost"), ("localhost:5000/img", "localhost:5000"), ("r:5000/img", "r:5000"),
    ("localhostx/img", None),
])
def test_registry_host_follows_dockers_rule(image, host):
    assert registry_host(image) == host


@pytest.mark.parametrize(("image", "registry", "resolved"), [
    ("team/img:1.2", ACR, "myacr.azurecr.io/team/img:1.2"),
    ("/team/img:1.2", ACR, "myacr.azurecr.io/team/img:1.2"),
    ("python:3.11", ACR, "myacr.azurecr.io/python:3.11"),
    ("team/img@sha256:" + "a" * 64, ACR, "myacr.azurecr.io/team/img@sha256:" + "a" * 64),
    ("myacr.azurecr.io/team/img:1.2", ACR, "myacr.azurecr.io/team/img:1.2"),
    ("/myacr.azurecr.io/team/img:1.2", ACR, "myacr.azurecr.io/team/img:1.2"),
    ("team/img:1.2", None, "team/img:1.2"),
    ("r.example:5000/team/img", {"address": "r.example:5000", "secretName": "s"}, "r.example:5000/team/img"),
])
def test_resolved_base_image_joins_a_relative_image_to_the_address(image, registry, resolved):
    spec = spec_from_body(docker(image, registry))
    assert spec.docker.resolved_base_image == resolved
    assert render_context(spec).files["Dockerfile"].splitlines()[1] == f"FROM {resolved}"


def test_no_base_image_resolves_to_none_and_renders_the_default():
    spec = spec_from_body({"docker": {"baseImageRegistry": ACR}})
    assert spec.docker.resolved_base_image is None
    assert render_context(spec).files["Dockerfile"].splitlines()[1] == "FROM python:3.11-slim-bookworm"


def test_image_of_another_registry_is_refused_naming_both_fields_and_the_fix():
    message = error_of(docker("other.example.com/team/img:1.2"))
    assert message == (
        "spec.docker.baseImage 'other.example.com/team/img:1.2' names registry other.example.com but "
        "spec.docker.baseImageRegistry.address is myacr.azurecr.io: write the image relative to the address "
        "('team/img:1.2') or qualified with it (myacr.azurecr.io/...), or set the address to other.example.com")


@pytest.mark.parametrize("image", ["localhost:5000/img", "myacr.azurecr.io:443/img", "MYACR.azurecr.io/img",
                                   "myacr.azurecr.io.evil.example/img"])
def test_hosts_compare_exactly_as_credentials_are_looked_up(image):
    assert error_of(docker(image)).startswith(f"spec.docker.baseImage '{image}' names registry ")


def test_leading_slash_needs_a_registry():
    message = error_of(docker("/team/img:1.2", registry=None))
    assert message.startswith("spec.docker.baseImage '/team/img:1.2' starts with '/'")
    assert "spec.docker.baseImageRegistry.address" in message and "add baseImageRegistry" in message


def test_relative_image_must_be_lower_case_to_join():
    assert "lower case" in error_of(docker("Team/img:1.2"))
    assert spec_from_body(docker("Team/img:1.2", registry=None)).docker.resolved_base_image == "Team/img:1.2"


@pytest.mark.parametrize("image", ["/", "//img", "/img/", "/ img", "/img\nRUN id"])
def test_leading_slash_form_is_still_a_plain_reference(image):
    assert error_of(docker(image)).startswith("spec.docker.baseImage: String should match pattern")


def test_crd_carries_the_same_rules_for_the_api_server():
    spec = build_crd("Environment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    docker_schema = spec["properties"]["docker"]
    assert docker_schema["properties"]["baseImage"]["pattern"].startswith("^/?")
    rules = [r["rule"] for r in docker_schema["x-kubernetes-validations"]]
    assert rules[0] == "!has(self.baseImage) || !self.baseImage.startsWith('/') || has(self.baseImageRegistry)"
    assert "self.baseImage.startsWith(self.baseImageRegistry.address + '/')" in rules[1]
    assert docker_schema["properties"]["baseImageRegistry"]["properties"]["address"]["maxLength"] == 259


class FakeRegistry:
    def __init__(self) -> None:
        self.asked: list[tuple[str, Credentials | None]] = []

    async def digest(self, image: str, credentials: Credentials | None) -> str:
        self.asked.append((image, credentials))
        return "sha256:" + "b" * 64


async def test_tracking_checks_the_joined_image_with_the_addresss_credentials():
    body: dict[str, Any] = {
        "metadata": {"name": "e", "namespace": "ns"},
        "spec": {**docker("team/img:1.2"), "build": {"trackBaseImage": {"enabled": True}}},
        "status": {"phase": "Ready"},
    }
    registry = FakeRegistry()

    async def base_registry_config(ref: EnvironmentRef, spec: EnvironmentSpec) -> dict[str, Any]:
        return builds.basic_auth_config(ACR["address"], "user", "pw")

    reconciler = SimpleNamespace(registry=registry, base_registry_config=base_registry_config)
    patch = kopf.Patch()
    await tracking.check_base_image(EnvironmentRef("Environment", "ns", "e"), body, patch,
                                    reconciler, logging.getLogger("test"))
    assert registry.asked == [("myacr.azurecr.io/team/img:1.2", Credentials("user", "pw"))]
    assert patch["status"]["baseImageDigest"] == "sha256:" + "b" * 64
    checked = datetime.datetime.fromisoformat(patch["status"]["baseImageChecked"].replace("Z", "+00:00"))
    assert checked.tzinfo is not None
