"""What a build pod may do and use (issue 15): the Kaniko container's security context, the resources every build
container gets, and the operator settings behind them (pure code; tests/integration/test_build_pod.py checks a
real build pod)."""

from __future__ import annotations

import pytest

from kenv import builds
from kenv.config import MAINTAINED_KANIKO_IMAGE, ConfigError, OperatorSettings, get_settings
from kenv.models import Builder, BuildSettings, ResourceRequirements, spec_from_body
from kenv.render import render_context

SETTINGS = OperatorSettings(destination_repo="registry.local:5000/kenv/envs")
PIP = {"pip": {"packages": ["six==1.16.0"]}}


def build_container(builder: Builder = Builder.KANIKO, resources: dict | None = None,
                    settings: OperatorSettings = SETTINGS) -> dict:
    context = render_context(spec_from_body(PIP))
    build = BuildSettings(builder=builder, resources=ResourceRequirements(**resources) if resources else None)
    job = builds.build_job(builds.plan_build(context, settings), build, settings, requested_by="ns/e",
                           context_files=list(context.files), has_docker_config=False, has_ca=False)
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def test_kaniko_runs_as_root_but_confined():
    context = build_container()["securityContext"]
    assert context["runAsUser"] == 0  # Kaniko unpacks the base image over its own root: it cannot run otherwise
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not {"NET_RAW", "NET_BIND_SERVICE", "SETPCAP", "SYS_ADMIN"} & set(context["capabilities"]["add"])


def test_every_build_container_gets_the_operator_defaults():
    for builder in Builder:
        assert build_container(builder)["resources"] == {"limits": {"cpu": "4", "memory": "8Gi"},
                                                         "requests": {"cpu": "100m", "memory": "256Mi"}}


def test_a_spec_replaces_the_defaults_of_each_resource_it_names_and_only_those():
    resources = build_container(resources={"requests": {"memory": "16Gi"}})["resources"]
    # memory: the spec's alone (a default 8Gi limit beside a 16Gi request would be refused); cpu: the defaults
    assert resources == {"requests": {"cpu": "100m", "memory": "16Gi"}, "limits": {"cpu": "4"}}
    resources = build_container(resources={"limits": {"nvidia.com/gpu": 1}})["resources"]
    assert resources["limits"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": 1}


def test_operator_defaults_come_from_kenv_build_resources(monkeypatch: pytest.MonkeyPatch):
    settings = SETTINGS.model_copy(update={"build_resources": ResourceRequirements(limits={"memory": "2Gi"})})
    assert build_container(settings=settings)["resources"] == {"limits": {"memory": "2Gi"}}
    monkeypatch.setenv("KENV_DESTINATION_REPO", "registry.local:5000/kenv/envs")
    monkeypatch.setenv("KENV_BUILD_RESOURCES", '{"limits": {"memory": "lots"}}')
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"KENV_BUILD_RESOURCES: .*limits\.memory: 'lots' is not a Kubernetes"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_the_default_kaniko_image_is_the_maintained_fork():
    assert SETTINGS.kaniko_image == MAINTAINED_KANIKO_IMAGE
    assert "chainguard-dev-kaniko" in build_container()["image"]
