"""Build-context rendering: layer order, files, and what does and does not move the content hash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kenv import conda_installer
from kenv.errors import SpecError, describe_validation_error
from kenv.models import CondaSection, EnvironmentSpec, spec_from_body
from kenv.render import (
    DEFAULT_BASE_IMAGE,
    RECIPE_VERSION,
    Externals,
    content_hash,
    environment_yml,
    render_context,
    split_global_args,
)

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


def test_conda_is_installed_in_a_rattler_stage_and_copied_before_the_pip_layer():
    context = render({"conda": {"packages": ["numpy=1.26"]}, "pip": {"packages": ["rich"]}})
    dockerfile = context.files["Dockerfile"]
    stage = dockerfile.index("FROM python:3.11-slim-bookworm AS kenv-conda")
    assert stage < dockerfile.index("FROM python:3.11-slim-bookworm\n")  # the installer stage, then the image
    assert ("RUN python3 /tmp/kenv/kenv-conda.py --no-pip $KENV_CONDA_CACHE --glibc 2.28 /tmp/kenv/environment.yml "
            "/opt/kenv/env" in dockerfile)
    assert dockerfile.index("COPY --from=kenv-conda /opt/kenv/env /opt/kenv/env") < dockerfile.index(
        "COPY requirements.txt")
    # With conda, pip runs with the conda environment's python, after checking there is one.
    assert "RUN [ -x /opt/kenv/env/bin/python ] ||" in dockerfile
    assert "RUN /opt/kenv/env/bin/python -m pip install" in dockerfile
    assert set(context.files) == {"Dockerfile", "environment.yml", "requirements.txt", "kenv-conda.py", "kenv-lock.py"}
    # the script in the context is kenv's installer module, byte for byte
    assert context.files["kenv-conda.py"] == Path(conda_installer.__file__).read_text()


def test_micromamba_installer_keeps_the_single_stage_recipe():
    context = render({"conda": {"packages": ["numpy=1.26"]}, "pip": {"packages": ["rich"]}},
                     Externals(conda_installer="micromamba"))
    dockerfile = context.files["Dockerfile"]
    assert "kenv-conda" not in dockerfile and "kenv-conda.py" not in context.files
    assert dockerfile.index("micromamba create") < dockerfile.index("pip install")
    assert set(context.files) == {"Dockerfile", "environment.yml", "requirements.txt", "kenv-lock.py"}


def test_a_user_dockerfiles_global_args_stay_ahead_of_the_installer_stage():
    dockerfile = "ARG BASE=debian:12\nFROM ${BASE}\nRUN true\n"
    rendered = render({"conda": {"packages": ["numpy"]}, "docker": {"dockerfile": dockerfile}}).files["Dockerfile"]
    assert rendered.index("ARG BASE=debian:12") < rendered.index("AS kenv-conda") < rendered.index("FROM ${BASE}")
    assert split_global_args("FROM a\nRUN b") == ("", "FROM a\nRUN b")


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


def test_environment_yaml_is_rendered_canonically():
    text = (
        "# keep me\nname: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.10  # pinned\n  - numpy\n"
    )
    rendered = render({"conda": {"environmentYaml": text}}).files["environment.yml"]
    assert rendered == "channels:\n- conda-forge\ndependencies:\n- python=3.10\n- numpy\nname: x\n"
    assert yaml.safe_load(rendered) == yaml.safe_load(text)
    assert render({"conda": {"environmentYaml": text.rstrip("\n")}}).files["environment.yml"] == rendered


def test_environment_yml_keeps_the_users_text_for_export():
    text = "# keep me\nname: x\ndependencies:\n  - numpy\n"
    assert environment_yml(spec_from_body({"conda": {"environmentYaml": text}})) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dependencies: [\n", r"^spec\.conda\.environmentYaml line 2: not valid YAML"),
        ("- just\n- a list\n", r"^spec\.conda\.environmentYaml: must be a mapping"),
        ("dependencies: numpy\n", r"^spec\.conda\.environmentYaml: must be a mapping"),
        ("dependencies:\n  - numpy && id\n", r"^spec\.conda\.environmentYaml: dependencies\[0\]: "),
    ],
)
def test_bad_environment_yaml_is_refused_at_validation(text, message):
    with pytest.raises(ValidationError) as info:
        spec_from_body({"conda": {"environmentYaml": text}})
    assert re.match(message, describe_validation_error(info.value))
    # A spec built without validation still fails to render, with the same field path.
    spec = EnvironmentSpec.model_construct(conda=CondaSection.model_construct(environment_yaml=text))
    with pytest.raises(SpecError, match=message):
        render_context(spec)


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


def test_installer_images_and_having_a_ca_change_the_hash():
    assert render(BASE, Externals(ca_bundle=CA)).hash != render(BASE).hash  # the Dockerfile copies it
    conda = {**BASE, "conda": {"packages": ["numpy"]}}
    assert render(conda, Externals(conda_installer_image="python:3.12-slim")).hash != render(conda).hash
    micromamba = Externals(conda_installer="micromamba")
    assert render(conda, Externals(conda_installer="micromamba", micromamba_image="mambaorg/micromamba:2.0.6")
                  ).hash != render(conda, micromamba).hash


def test_rotating_the_ca_keeps_the_hash_and_still_ships_the_new_ca_to_the_build():
    rotated = CA.replace("MIIB", "MIIC")
    first, second = render(BASE, Externals(ca_bundle=CA)), render(BASE, Externals(ca_bundle=rotated))
    assert first.hash == second.hash
    assert second.files["kenv-ca.crt"] == rotated


@pytest.mark.parametrize(
    ("channels", "solved_with"),
    [
        (["pytorch"], ["pytorch", "conda-forge"]),  # the guide's pytorch example still finds numpy
        (["conda-forge", "pytorch"], ["conda-forge", "pytorch"]),
        (["pytorch", "https://conda.anaconda.org/conda-forge/"], ["pytorch", "https://conda.anaconda.org/conda-forge/"]),
        (["pytorch", "nodefaults"], ["pytorch"]),  # conda's own opt-out
        ([], ["conda-forge"]),
    ],
)
def test_conda_forge_is_the_implicit_last_channel(channels, solved_with):
    document = {"name": "x", "channels": channels, "dependencies": ["numpy"]}
    rendered = render({"conda": {"environmentYaml": yaml.safe_dump(document)}})
    assert yaml.safe_load(rendered.files["environment.yml"])["channels"] == solved_with
    structured = render({"conda": {"channels": channels, "packages": ["numpy"]}} if channels else
                        {"conda": {"packages": ["numpy"]}})
    assert yaml.safe_load(structured.files["environment.yml"])["channels"] == solved_with


def test_export_keeps_the_channels_as_written():
    text = "name: x\nchannels: [pytorch, nodefaults]\ndependencies: [numpy]\n"
    assert environment_yml(spec_from_body({"conda": {"environmentYaml": text}})) == text


def test_hash_is_deterministic_and_tag_is_derived_from_it():
    first, second = render(BASE), render(BASE)
    assert first.hash == second.hash == content_hash(first.files)
    assert first.tag == "kenv-" + first.hash[:40]
    assert len(first.hash) == 64


def test_content_hash_separates_names_from_contents():
    assert content_hash({"ab": "c"}) != content_hash({"a": "bc"})
    assert content_hash({"a": "1", "b": "2"}) == content_hash({"b": "2", "a": "1"})


def test_recipe_version_is_4():
    assert RECIPE_VERSION == "4"
    assert "(recipe 4)" in render(BASE).files["Dockerfile"]


ENV_YAML = (
    "name: train\nchannels:\n  - pytorch\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pytorch=2.3\n"
    "  - pip\n  - pip:\n      - rich==13.7.1\n"
)


@pytest.mark.parametrize(
    "edited",
    [
        # comments, blank lines, indentation and trailing spaces
        "# the training env\n\nname: train   \nchannels:\n- pytorch\n- conda-forge\n\ndependencies:\n"
        "- python=3.11   # pinned\n- pytorch=2.3\n- pip\n- pip:\n  - rich==13.7.1\n\n",
        # key order and flow style
        "dependencies: [python=3.11, pytorch=2.3, pip, {pip: [rich==13.7.1]}]\nchannels: [pytorch, conda-forge]\n"
        "name: train",
        # CRLF line ends
        ENV_YAML.replace("\n", "\r\n"),
    ],
)
def test_environment_yaml_whitespace_comments_and_key_order_do_not_change_the_hash(edited):
    assert render({"conda": {"environmentYaml": edited}}).hash == render({"conda": {"environmentYaml": ENV_YAML}}).hash


@pytest.mark.parametrize(
    "changed",
    [
        ENV_YAML.replace("pytorch=2.3", "pytorch=2.4"),
        ENV_YAML.replace("  - pytorch\n  - conda-forge\n", "  - conda-forge\n  - pytorch\n"),  # priority order
        ENV_YAML.replace("rich==13.7.1", "rich==13.7.0"),
        ENV_YAML.replace("name: train", "name: other"),
    ],
)
def test_environment_yaml_content_changes_change_the_hash(changed):
    assert render({"conda": {"environmentYaml": changed}}).hash != render({"conda": {"environmentYaml": ENV_YAML}}).hash


REQUIREMENTS = "--extra-index-url https://download.pytorch.org/whl/cu121\ntorch==2.4.0\nnumpy<2  # pinned\n"


@pytest.mark.parametrize(
    "edited",
    [
        "\n  --extra-index-url https://download.pytorch.org/whl/cu121   \n\n\ttorch==2.4.0\t\nnumpy<2  # pinned",
        REQUIREMENTS.replace("\n", "\r\n"),
        REQUIREMENTS + "\n\n   \n",
    ],
)
def test_requirements_whitespace_does_not_change_the_hash(edited):
    assert render({"pip": {"requirements": edited}}).hash == render({"pip": {"requirements": REQUIREMENTS}}).hash


def test_requirements_are_rendered_one_stripped_line_each():
    body = "  numpy==1.26.4 \\\n   --hash=sha256:" + "a" * 64 + "\n\n# note  \n rich  \n"
    assert render({"pip": {"requirements": body, "packages": [" mlflow "]}}).files["requirements.txt"] == (
        "numpy==1.26.4    --hash=sha256:" + "a" * 64 + "\n# note\nrich\nmlflow\n"
    )


@pytest.mark.parametrize(
    "changed",
    [
        REQUIREMENTS.replace("torch==2.4.0", "torch==2.4.1"),
        REQUIREMENTS.replace("cu121", "cu124"),
        "torch==2.4.0\n--extra-index-url https://download.pytorch.org/whl/cu121\nnumpy<2  # pinned\n",  # order
    ],
)
def test_requirements_content_changes_change_the_hash(changed):
    assert render({"pip": {"requirements": changed}}).hash != render({"pip": {"requirements": REQUIREMENTS}}).hash


DOCKERFILE = "FROM ubuntu:22.04\nRUN apt-get update && \\\n    apt-get install -y git\nENV A=1\n"


@pytest.mark.parametrize(
    "edited",
    [
        "FROM ubuntu:22.04   \n\n\nRUN apt-get update && \\  \n    apt-get install -y git\t\n\nENV A=1",
        DOCKERFILE.replace("\n", "\r\n"),
        "\n\n" + DOCKERFILE + "\n\n",
    ],
)
def test_dockerfile_whitespace_does_not_change_the_hash(edited):
    assert render({"docker": {"dockerfile": edited}}).hash == render({"docker": {"dockerfile": DOCKERFILE}}).hash
    body = {"docker": {"dockerfileFrom": {"name": "base", "key": "Dockerfile"}}}
    assert render(body, Externals(dockerfile=edited)).hash == render(body, Externals(dockerfile=DOCKERFILE)).hash


@pytest.mark.parametrize(
    "changed",
    [
        DOCKERFILE.replace("ENV A=1", "ENV A=2"),
        DOCKERFILE.replace("    apt-get", "    apt-get -q"),
        "FROM ubuntu:22.04\nENV A=1\nRUN apt-get update && \\\n    apt-get install -y git\n",  # order
    ],
)
def test_dockerfile_content_changes_change_the_hash(changed):
    assert render({"docker": {"dockerfile": changed}}).hash != render({"docker": {"dockerfile": DOCKERFILE}}).hash


def test_dockerfile_heredoc_bodies_are_kept_byte_for_byte():
    body = (
        "FROM alpine:3.20  \n\nRUN <<EOF\necho 'a  '   \n\n  echo b\nEOF\n\n"
        "COPY <<-'CFG' /etc/x.conf\nkey = v  \n\n\tCFG\nENV A=1  \n"
    )
    rendered = render({"docker": {"dockerfile": body}}).files["Dockerfile"]
    assert (
        "FROM alpine:3.20\nRUN <<EOF\necho 'a  '   \n\n  echo b\nEOF\n"
        "COPY <<-'CFG' /etc/x.conf\nkey = v  \n\n\tCFG\nENV A=1\n"
    ) in rendered
    edited = body.replace("key = v  \n", "key = v \n")  # whitespace inside a heredoc is content
    assert render({"docker": {"dockerfile": edited}}).hash != render({"docker": {"dockerfile": body}}).hash


def test_the_installer_solves_for_the_configured_glibc_and_cuda_not_the_build_pods():
    body = {"conda": {"packages": ["pytorch"]}}
    default = render(body).files["Dockerfile"]
    assert "kenv-conda.py --no-pip $KENV_CONDA_CACHE --glibc 2.28 /tmp/kenv/environment.yml" in default
    gpu = render(body, Externals(conda_glibc="2.31", conda_cuda="12.4"))
    assert ("kenv-conda.py --no-pip $KENV_CONDA_CACHE --glibc 2.31 --cuda 12.4 /tmp/kenv/environment.yml"
            in gpu.files["Dockerfile"])
    assert gpu.hash != render(body).hash  # another target is another image


def test_the_environment_files_pip_list_is_installed_in_the_image_itself():
    context = render({"conda": {"environmentYaml": "dependencies: [python=3.11, pip, {pip: [rich, --pre]}]\n"}})
    assert context.files["conda-requirements.txt"] == "rich\n--pre\n"
    dockerfile = context.files["Dockerfile"]
    copy = dockerfile.index("COPY --from=kenv-conda /opt/kenv/env /opt/kenv/env")
    assert copy < dockerfile.index("RUN /opt/kenv/env/bin/python -m pip install $KENV_PIP_CACHE "
                                   "--disable-pip-version-check -r /tmp/kenv/conda-requirements.txt")
    assert "conda-requirements.txt" not in render({"conda": {"packages": ["numpy"]}}).files


def test_a_user_dockerfile_naming_stages_by_number_is_refused_with_conda():
    dockerfile = "FROM golang:1.23 AS build\nRUN go build -o /out .\nFROM debian:12\nCOPY --from=0 /out /out\n"
    with pytest.raises(SpecError) as error:
        render({"conda": {"packages": ["numpy"]}, "docker": {"dockerfile": dockerfile}})
    assert str(error.value).startswith("spec.docker.dockerfile: `from=0` names a stage by number")
    assert render({"docker": {"dockerfile": dockerfile}, "pip": {"packages": ["rich"]}}).files  # no stage added
    assert split_global_args("ARG B=1\nFROM\t${B}\n") == ("ARG B=1", "FROM\t${B}")


@pytest.mark.parametrize(("body", "externals", "python"), [
    ({"pip": {"packages": ["rich"]}}, None, "python3"),
    ({"pip": {"packages": ["rich"], "installer": "uv"}}, None, "python3"),
    ({"conda": {"packages": ["numpy"]}, "pip": {"packages": ["rich"]}}, None, "/opt/kenv/env/bin/python python3"),
    ({"conda": {"packages": ["numpy"]}}, Externals(conda_installer="micromamba"), "/opt/kenv/env/bin/python python3"),
    ({"docker": {"dockerfile": "FROM python:3.12\nUSER 1000\n"}, "python": {"interpreterPath": "/venv/bin/python"},
      "pip": {"packages": ["rich"]}}, None, "/venv/bin/python python3"),
])
def test_every_install_ends_with_the_lock_step_alone(body, externals, python):
    context = render(body, externals)
    instructions = [line.split()[0] for line in context.files["Dockerfile"].splitlines()
                    if line and not line.startswith("#")]
    last_run = context.files["Dockerfile"].rstrip().splitlines()[-1]
    assert instructions[-2:] == ["COPY", "RUN"] and "kenv-lock.py" in context.files
    assert last_run.startswith(f"RUN for py in {python}; do ")  # the image's interpreter first, once
    conda = " /opt/kenv/env" if "conda" in body else ""
    assert f"/tmp/kenv/kenv-lock.py /etc/kenv/lock.json /tmp/kenv-lock.json{conda} ||" in last_run


@pytest.mark.parametrize("body", [{"docker": {"baseImage": "python:3.12"}},
                                  {"docker": {"dockerfile": "FROM scratch\nCOPY x /x\n"},
                                   "python": {"userManagedDependencies": True}}])
def test_an_image_kenv_installs_nothing_into_gets_no_lock_step(body):
    context = render(body)
    assert "kenv-lock.py" not in context.files and "kenv-lock" not in context.files["Dockerfile"]
