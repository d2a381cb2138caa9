"""EnvironmentSpec validation: valid specs parse, and every rule's message names the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kenv.errors import describe_validation_error
from kenv.models import Builder, EnvironmentSpec, spec_from_body

FULL = {
    "description": "pytorch training",
    "python": {"version": "3.11"},
    "pip": {
        "requirements": "torch==2.4.0\n--extra-index-url https://download.pytorch.org/whl/cu121\n",
        "packages": ["mlflow==2.14.1"],
        "indexUrl": "https://pypi.example.com/simple",
        "extraIndexUrls": ["https://mirror.example.com/simple"],
    },
    "conda": {"channels": ["conda-forge"], "packages": ["numpy=1.26"], "pipPackages": ["rich"]},
    "docker": {
        "baseImage": "registry.example.com:5000/team/base:1.0",
        "shmSize": "2Gi",
        "baseImageRegistry": {"address": "registry.example.com:5000", "secretName": "base-pull"},
    },
    "environmentVariables": {"OMP_NUM_THREADS": "4", "_PRIVATE": "x"},
    "secretEnv": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}],
    "secretEnvFrom": [{"secretName": "wandb", "prefix": "WANDB_"}],
    "bootstrap": {"script": "echo hi", "mode": "RankZero"},
    "build": {"builder": "buildah", "timeoutSeconds": 600, "caBundle": {"name": "ca", "key": "ca.crt"}},
}


def error_of(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        spec_from_body(body)
    return describe_validation_error(info.value)


def test_full_spec_parses_with_snake_case_attributes():
    spec = spec_from_body(FULL)
    assert spec.pip is not None and spec.pip.extra_index_urls == ["https://mirror.example.com/simple"]
    assert spec.docker.shm_size == "2Gi"
    assert spec.build.builder is Builder.BUILDAH
    assert spec.secret_env[0].secret_key_ref.key == "token"
    assert spec.bootstrap is not None and spec.bootstrap.marker_dir == "/kenv-shared"


def test_empty_spec_is_valid_and_defaults_apply():
    spec = spec_from_body({})
    assert spec.python.user_managed_dependencies is False
    assert spec.build.cache is True and spec.build.timeout_seconds == 3600


def test_dump_by_alias_round_trips():
    spec = spec_from_body(FULL)
    again = EnvironmentSpec.model_validate(spec.model_dump(by_alias=True, mode="json"))
    assert again == spec


@pytest.mark.parametrize(
    "docker",
    [
        {"baseImage": "python:3.11", "dockerfile": "FROM ubuntu:22.04\n"},
        {"dockerfile": "FROM ubuntu:22.04\n", "dockerfileFrom": {"name": "df", "key": "Dockerfile"}},
        {"baseImage": "python:3.11", "dockerfileFrom": {"name": "df", "key": "Dockerfile"}},
    ],
)
def test_base_image_and_dockerfiles_are_exclusive(docker):
    message = error_of({"docker": docker})
    assert message.startswith("spec.docker:")
    assert "mutually exclusive" in message


@pytest.mark.parametrize("extra", [{"pip": {"packages": ["numpy"]}}, {"conda": {"packages": ["numpy"]}}])
def test_user_managed_forbids_pip_and_conda(extra):
    message = error_of({"python": {"userManagedDependencies": True}, **extra})
    assert message.startswith("spec.python.userManagedDependencies forbids pip and conda")


def test_user_managed_with_interpreter_is_valid():
    spec = spec_from_body(
        {"python": {"userManagedDependencies": True, "interpreterPath": "/opt/conda/bin/python"}}
    )
    assert spec.python.interpreter_path == "/opt/conda/bin/python"


@pytest.mark.parametrize("name", ["1ABC", "MY-VAR", "A B", ""])
def test_bad_environment_variable_name(name):
    message = error_of({"environmentVariables": {name: "x"}})
    assert message.startswith("spec.environmentVariables:")
    assert repr(name) in message


def test_bad_secret_env_name_names_the_item():
    message = error_of({"secretEnv": [{"name": "BAD-NAME", "secretKeyRef": {"name": "s", "key": "k"}}]})
    assert message.startswith("spec.secretEnv[0].name:")


@pytest.mark.parametrize("package", ["numpy\nRUN evil", "numpy\r", ""])
def test_pip_package_must_be_one_line(package):
    message = error_of({"pip": {"packages": ["ok", package]}})
    assert message.startswith("spec.pip.packages[1]:")


def test_conda_channel_must_be_one_line():
    assert error_of({"conda": {"channels": ["conda-forge\nx"]}}).startswith("spec.conda.channels[0]:")


@pytest.mark.parametrize(
    "line", ["-r other.txt", "  -c constraints.txt", "--requirement=x.txt", "-rfile.txt"]
)
def test_requirements_include_is_refused_with_line_number(line):
    message = error_of({"pip": {"requirements": f"numpy\n{line}\n"}})
    assert message.startswith("spec.pip.requirements line 2: includes (-r/-c)")


def test_pip_package_include_is_refused():
    assert error_of({"pip": {"packages": ["-r /etc/passwd"]}}).startswith("spec.pip.packages[0]: includes")


def test_index_options_in_requirements_are_allowed():
    spec = spec_from_body({"pip": {"requirements": "--index-url https://x.example/simple\n--pre\nnumpy\n"}})
    assert spec.pip is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pip": {"pakages": ["numpy"]}}, "spec.pip.pakages"),
        ({"dockr": {}}, "spec.dockr"),
        ({"build": {"resources": {"request": {}}}}, "spec.build.resources.request"),
    ],
)
def test_unknown_field_is_named_with_a_hint(body, field):
    message = error_of(body)
    assert message.startswith(f"{field}: unknown field")
    assert "kubectl explain" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"docker": {"baseImage": "python:3.11 AS x"}}, "spec.docker.baseImage"),
        ({"docker": {"baseImage": "python:3.11\nRUN id"}}, "spec.docker.baseImage"),
        ({"pip": {"indexUrl": "https://x.example/simple\nRUN id"}}, "spec.pip.indexUrl"),
        ({"pip": {"extraIndexUrls": ["ftp://x"]}}, "spec.pip.extraIndexUrls[0]"),
        ({"python": {"version": "2.7"}}, "spec.python.version"),
        ({"python": {"interpreterPath": "python3"}}, "spec.python.interpreterPath"),
        ({"python": {"interpreterPath": "/usr/bin/python;id"}}, "spec.python.interpreterPath"),
        ({"python": {"interpreterPath": "/usr/bin/$(id)"}}, "spec.python.interpreterPath"),
        ({"build": {"timeoutSeconds": 10}}, "spec.build.timeoutSeconds"),
        ({"build": {"builder": "docker"}}, "spec.build.builder"),
        ({"bootstrap": {"script": "x", "mode": "Sometimes"}}, "spec.bootstrap.mode"),
        (
            {"docker": {"baseImageRegistry": {"address": "https://r.example", "secretName": "s"}}},
            "spec.docker.baseImageRegistry.address",
        ),
    ],
)
def test_pattern_errors_name_the_field(body, field):
    assert error_of(body).startswith(f"{field}:")


def test_conda_environment_yaml_excludes_structured_fields():
    message = error_of({"conda": {"environmentYaml": "dependencies: []\n", "packages": ["numpy"]}})
    assert message.startswith("spec.conda: give either environmentYaml")


def test_several_problems_are_reported_on_one_line():
    message = error_of({"pip": {"packages": ["a\nb"]}, "build": {"builder": "docker"}})
    assert "\n" not in message
    assert "spec.pip.packages[0]" in message and "spec.build.builder" in message


def test_shm_size_accepts_int_or_string():
    assert spec_from_body({"docker": {"shmSize": 1073741824}}).docker.shm_size == 1073741824
    assert spec_from_body({"docker": {"shmSize": "1Gi"}}).docker.shm_size == "1Gi"
