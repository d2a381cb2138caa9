"""Build-context rendering: layer order, files, and what does and does not move the content hash."""

from __future__ import annotations

import pytest
import yaml

from kenv.errors import SpecError
from kenv.models import spec_from_body
from kenv.render import DEFAULT_BASE_IMAGE, RECIPE_VERSION, Externals, content_hash, render_context

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def render(body: dict, externals: Externals | None = None):
    return render_context(spec_from_body(body), externals)


def instructions(dockerfile: str) -> list[str]:
    return [line.split()[0] for line in dockerfile.splitlines() if line and not line.startswith("#")]


def test_base_image_only_has_no_installs():
    context = render({"docker": {"baseImage": "ubuntu:22.04"}})
    assert set(context.files) == {"Dockerfile"}
    assert instructions(context.files["Dockerfile"]) == ["FROM"]
    assert "FROM ubuntu:22.04\n" in context.files["Dockerfile"]
    assert f"recipe {RECIPE_VERSION}" in context.files["Dockerfile"]


def test_default_base_image_and_override():
    assert f"FROM {DEFAULT_BASE_IMAGE}\n" in render({}).files["Dockerfile"]
    custom = render({}, Externals(default_base_image="debian:12"))
    assert "FROM debian:12\n" in custom.files["Dockerfile"]


def test_conda_layer_comes_before_pip_layer():
    context = render({"conda": {"packages": ["numpy=1.26"]}, "pip": {"packages": ["rich"]}})
    dockerfile = context.files["Dockerfile"]
    assert dockerfile.index("micromamba create") < dockerfile.index("pip install")
    assert dockerfile.index("COPY environment.yml") < dockerfile.index("COPY requirements.txt")
    # With conda, pip runs with the conda environment's python.
    assert "RUN /opt/kenv/env/bin/python -m pip install" in dockerfile
    assert set(context.files) == {"Dockerfile", "environment.yml", "requirements.txt"}


def test_pip_only_uses_interpreter_path_or_python3():
    assert "RUN python3 -m pip install" in render({"pip": {"packages": ["rich"]}}).files["Dockerfile"]
    body = {"pip": {"packages": ["rich"]}, "python": {"interpreterPath": "/opt/py/bin/python3.12"}}
    context = render(body)
    assert "RUN /opt/py/bin/python3.12 -m pip install" in context.files["Dockerfile"]
    assert "environment.yml" not in context.files


def test_requirements_txt_index_urls_then_requirements_then_packages():
    body = {
        "pip": {
            "requirements": "torch==2.4.0\n# comment\n",
            "packages": ["rich", "numpy<2"],
            "indexUrl": "https://pypi.example.com/simple",
            "extraIndexUrls": ["https://a.example/simple", "https://b.example/simple"],
        }
    }
    assert render(body).files["requirements.txt"] == (
        "--index-url https://pypi.example.com/simple\n"
        "--extra-index-url https://a.example/simple\n"
        "--extra-index-url https://b.example/simple\n"
        "torch==2.4.0\n# comment\nrich\nnumpy<2\n"
    )


def test_structured_conda_environment_yml():
    body = {
        "python": {"version": "3.11"},
        "conda": {
            "channels": ["pytorch", "conda-forge"],
            "packages": ["pytorch=2.3"],
            "pipPackages": ["rich"],
        },
    }
    document = yaml.safe_load(render(body).files["environment.yml"])
    assert document == {
        "name": "kenv",
        "channels": ["pytorch", "conda-forge"],
        "dependencies": ["python=3.11", "pytorch=2.3", "pip", {"pip": ["rich"]}],
    }


def test_python_version_alone_creates_a_conda_env():
    context = render({"python": {"version": "3.12"}})
    assert yaml.safe_load(context.files["environment.yml"])["dependencies"] == ["python=3.12"]
    assert "ENV PATH=/opt/kenv/env/bin:$PATH" in context.files["Dockerfile"]


def test_environment_yaml_is_kept_byte_for_byte():
    text = (
        "# keep me\nname: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.10  # pinned\n  - numpy\n"
    )
    assert render({"conda": {"environmentYaml": text}}).files["environment.yml"] == text
    assert render({"conda": {"environmentYaml": text.rstrip("\n")}}).files["environment.yml"] == text


@pytest.mark.parametrize("text", ["dependencies: [\n", "- just\n- a list\n", "dependencies: numpy\n"])
def test_bad_environment_yaml_is_a_spec_error(text):
    with pytest.raises(SpecError, match=r"^spec\.conda\.environmentYaml: "):
        render({"conda": {"environmentYaml": text}})


def test_ca_bundle_only_when_something_is_installed():
    externals = Externals(ca_bundle=CA)
    plain = render({"docker": {"baseImage": "ubuntu:22.04"}}, externals)
    assert "kenv-ca.crt" not in plain.files and "kenv-ca.crt" not in plain.files["Dockerfile"]
    with_pip = render({"pip": {"packages": ["rich"]}}, externals)
    assert with_pip.files["kenv-ca.crt"] == CA
    dockerfile = with_pip.files["Dockerfile"]
    assert dockerfile.index("COPY kenv-ca.crt") < dockerfile.index("pip install")
    assert "ARG PIP_CERT=/etc/kenv/ca.crt" in dockerfile
    assert "ENV PIP_CERT" not in dockerfile  # the CA is trusted during the build only


def test_user_managed_installs_nothing():
    body = {
        "python": {"userManagedDependencies": True, "interpreterPath": "/opt/conda/bin/python"},
        "docker": {"baseImage": "nvcr.io/nvidia/pytorch:24.05-py3"},
    }
    context = render(body, Externals(ca_bundle=CA))
    assert set(context.files) == {"Dockerfile"}
    assert "RUN" not in context.files["Dockerfile"]


def test_inline_dockerfile_is_the_base():
    dockerfile = "FROM ubuntu:22.04\nRUN apt-get update && apt-get install -y git\n"
    context = render({"docker": {"dockerfile": dockerfile}, "pip": {"packages": ["rich"]}})
    assert context.files["Dockerfile"].index("RUN apt-get") < context.files["Dockerfile"].index("pip install")
    assert f"FROM {DEFAULT_BASE_IMAGE}" not in context.files["Dockerfile"]


def test_dockerfile_from_configmap_comes_from_externals():
    body = {"docker": {"dockerfileFrom": {"name": "base", "key": "Dockerfile"}}}
    with pytest.raises(SpecError, match=r"^spec\.docker\.dockerfileFrom: ConfigMap base key Dockerfile"):
        render(body)
    first = render(body, Externals(dockerfile="FROM alpine:3.20\n"))
    assert "FROM alpine:3.20\n" in first.files["Dockerfile"]
    second = render(body, Externals(dockerfile="FROM alpine:3.19\n"))
    assert first.hash != second.hash


BASE = {
    "docker": {"baseImage": "python:3.11"},
    "pip": {"packages": ["rich"]},
    "conda": {"packages": ["numpy"]},
}


@pytest.mark.parametrize(
    "injected",
    [
        {"environmentVariables": {"A": "1"}},
        {"secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "s", "key": "k"}}]},
        {"secretEnvFrom": [{"secretName": "s"}]},
        {"bootstrap": {"script": "pip install -e .", "mode": "RankZero"}},
        {"docker": {"baseImage": "python:3.11", "shmSize": "8Gi"}},
        {"description": "changed"},
        {"build": {"builder": "buildah", "timeoutSeconds": 7200}},
    ],
)
def test_injection_only_fields_do_not_change_the_hash(injected):
    assert render({**BASE, **injected}).hash == render(BASE).hash


@pytest.mark.parametrize(
    "changed",
    [
        {"docker": {"baseImage": "python:3.12"}},
        {"pip": {"packages": ["rich==13.7.1"]}},
        {"pip": {"packages": ["rich"], "indexUrl": "https://pypi.example.com/simple"}},
        {"conda": {"packages": ["numpy"], "channels": ["pytorch"]}},
        {"python": {"version": "3.11"}},
    ],
)
def test_content_changes_change_the_hash(changed):
    assert render({**BASE, **changed}).hash != render(BASE).hash


def test_ca_bundle_and_micromamba_image_change_the_hash():
    assert render(BASE, Externals(ca_bundle=CA)).hash != render(BASE).hash
    assert render(BASE, Externals(micromamba_image="mambaorg/micromamba:2.0.6")).hash != render(BASE).hash


def test_hash_is_deterministic_and_tag_is_derived_from_it():
    first, second = render(BASE), render(BASE)
    assert first.hash == second.hash == content_hash(first.files)
    assert first.tag == "kenv-" + first.hash[:40]
    assert len(first.hash) == 64


def test_content_hash_separates_names_from_contents():
    assert content_hash({"ab": "c"}) != content_hash({"a": "bc"})
    assert content_hash({"a": "1", "b": "2"}) == content_hash({"b": "2", "a": "1"})
