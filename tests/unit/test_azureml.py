"""Azure ML import/export: the sample folders, bare files, round trips, secrets and one-line errors."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from kenv import azureml, azureml_common
from kenv.azureml import import_azureml
from kenv.azureml_common import NAME_ANNOTATION, TAGS_ANNOTATION, VERSION_ANNOTATION
from kenv.azureml_export import export_azureml
from kenv.errors import SpecError
from kenv.models import EnvironmentSpec
from kenv.render import render_context

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "azureml"
V1, V2 = EXAMPLES / "v1-sklearn", EXAMPLES / "v2-pytorch"
# Written by azureml-core 1.61.0's Environment.save_to_directory (never a real password):
#   v1-private-registry: Environment("private-train"), docker.base_image = "team/img:1.2",
#     base_image_registry.address/username/password = "myacr.azurecr.io"/"myacr"/"not-a-real-password"
#   v1-stale-dockerfile: Environment("stale-train"), docker.base_dockerfile = "FROM ubuntu:20.04\nRUN echo stale\n"
SDK = Path(__file__).resolve().parent / "fixtures" / "azureml"
PRIVATE, STALE = SDK / "v1-private-registry", SDK / "v1-stale-dockerfile"
SDK_PASSWORD = "not-a-real-password"
CONDA = "name: train\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - numpy=1.26\n"
TODAY = date(2026, 11, 27)  # python 3.10 is past its end of life, 3.11 is not


def v1_folder(tmp_path: Path, definition: dict | None = None, **files: str) -> Path:
    """A copy of the v1 sample with `definition` merged into azureml_environment.json and files replaced."""
    folder = tmp_path / "v1"
    shutil.copytree(V1, folder)
    doc = json.loads((folder / "azureml_environment.json").read_text())
    for key, value in (definition or {}).items():
        merge = isinstance(value, dict) and isinstance(doc.get(key), dict)
        doc[key] = {**doc[key], **value} if merge else value
    (folder / "azureml_environment.json").write_text(json.dumps(doc))
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


def only_environment(path: Path, name: str | None = None, **options: Any) -> tuple[dict, list[str]]:
    manifests, warnings = import_azureml(path, name, **options)
    assert [m["kind"] for m in manifests] == ["Environment"]
    return manifests[0], warnings


def test_import_v1_sample_folder():
    env, warnings = only_environment(V1, today=TODAY)
    assert warnings == [  # nothing lost; what review_conda flags in the sample (tests/unit/test_azureml_piponly.py)
        "conda_dependencies.yml: python=3.10.13 pins python 3.10, end-of-life since 2026-10-31 (no more security "
        "fixes): pin 3.11 or later",
        "conda_dependencies.yml: channel anaconda: subject to Anaconda's terms of service; use conda-forge or your "
        "mirror"]
    assert env["apiVersion"] == "kenv.dev/v1alpha1"
    assert env["metadata"] == {"name": "sklearn-train-env", "annotations": {
        NAME_ANNOTATION: "sklearn_Train-Env", VERSION_ANNOTATION: "4"}}
    spec = env["spec"]
    assert spec["conda"]["environmentYaml"] == (V1 / "conda_dependencies.yml").read_text()
    assert spec["python"] == {"version": "3.10.13"}
    assert spec["docker"] == {"baseImage": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:20230509.v1",
                              "shmSize": "2Gi"}
    assert spec["environmentVariables"] == {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_AWAIT_TIMEOUT": "60"}
    render_context(EnvironmentSpec.model_validate(spec))  # the imported spec renders


def test_import_v2_sample_folder_and_file_agree():
    before_eol = date(2026, 10, 30)  # python 3.10 still supported: nothing to warn about
    env, warnings = only_environment(V2, today=before_eol)
    assert warnings == []
    assert env["metadata"]["name"] == "pytorch-2-cuda12"
    assert env["metadata"]["annotations"][VERSION_ANNOTATION] == "3"
    tags = json.loads(env["metadata"]["annotations"][TAGS_ANNOTATION])
    assert tags == {"framework": "pytorch", "team": "vision"}
    assert env["spec"]["description"].startswith("PyTorch 2.3")
    assert env["spec"]["conda"]["environmentYaml"] == (V2 / "conda.yaml").read_text()
    assert env["spec"]["python"] == {"version": "3.10"}
    assert env["spec"]["docker"]["baseImage"].startswith("mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8")
    assert only_environment(V2 / "environment.yml", today=before_eol) == (env, [])


def test_import_bare_conda_file_uses_its_name_or_the_given_one(tmp_path):
    (tmp_path / "env.yml").write_text(CONDA)
    env, _ = only_environment(tmp_path / "env.yml")
    assert env["metadata"]["name"] == "train"
    assert env["spec"] == {"python": {"version": "3.11"}, "conda": {"environmentYaml": CONDA}}
    assert only_environment(tmp_path / "env.yml", "My_Env")[0]["metadata"]["name"] == "my-env"


def test_import_requirements_txt_needs_a_name(tmp_path):
    (tmp_path / "requirements.txt").write_text("--index-url https://pypi.example.com/simple\ntorch==2.4.0\n")
    env, _ = only_environment(tmp_path / "requirements.txt", "train")
    assert env["spec"] == {"pip": {"requirements": "--index-url https://pypi.example.com/simple\ntorch==2.4.0\n"}}
    with pytest.raises(SpecError, match=r"^requirements\.txt: no environment name .*--name"):
        import_azureml(tmp_path / "requirements.txt")


def test_registry_password_is_left_out_by_default_with_the_command_that_creates_the_secret(tmp_path):
    registry = {"address": None, "username": "myacr", "password": "s3cr3t-Pa55"}
    docker = {"baseImage": "myacr.azurecr.io/base/train:1.0", "baseImageRegistry": registry}
    env, warnings = only_environment(v1_folder(tmp_path, {"docker": docker}))
    assert env["spec"]["docker"]["baseImageRegistry"] == {"address": "myacr.azurecr.io",
                                                          "secretName": "sklearn-train-env-registry"}
    assert "s3cr3t-Pa55" not in azureml.dump_manifests([env]) + "\n".join(warnings)
    command = ("kubectl create secret docker-registry sklearn-train-env-registry --docker-server=myacr.azurecr.io "
               "--docker-username=myacr --docker-password=<password>")
    assert any(w.endswith(command) and "--include-secret" in w for w in warnings), warnings


def test_sdk_private_registry_folder_imports_without_the_password_and_builds_from_the_address():
    env, warnings = only_environment(PRIVATE)
    docker = env["spec"]["docker"]
    # Kept as Azure ML wrote it; the API joins it to the address (see DockerSection.resolved_base_image).
    assert docker["baseImage"] == "team/img:1.2"
    assert docker["baseImageRegistry"] == {"address": "myacr.azurecr.io", "secretName": "private-train-registry"}
    assert SDK_PASSWORD not in azureml.dump_manifests([env]) + "\n".join(warnings)
    assert any("kubectl create secret docker-registry private-train-registry --docker-server=myacr.azurecr.io "
               "--docker-username=myacr --docker-password=<password>" in w for w in warnings)
    spec = EnvironmentSpec.model_validate(env["spec"])
    assert spec.docker.resolved_base_image == "myacr.azurecr.io/team/img:1.2"
    assert "FROM myacr.azurecr.io/team/img:1.2\n" in render_context(spec).files["Dockerfile"]


@pytest.mark.parametrize("image", ["/team/img:1.2", "myacr.azurecr.io/team/img:1.2"])
def test_sdk_guide_forms_of_a_private_image_all_pull_from_the_address(tmp_path, image):
    shutil.copytree(PRIVATE, tmp_path / "env")
    definition = json.loads((tmp_path / "env" / "azureml_environment.json").read_text())
    definition["docker"]["baseImage"] = image
    (tmp_path / "env" / "azureml_environment.json").write_text(json.dumps(definition))
    env, _ = only_environment(tmp_path / "env")
    assert env["spec"]["docker"]["baseImage"] == image
    assert EnvironmentSpec.model_validate(env["spec"]).docker.resolved_base_image == "myacr.azurecr.io/team/img:1.2"


def test_image_of_another_registry_than_the_address_is_refused_on_import(tmp_path):
    registry = {"address": "myacr.azurecr.io", "username": "u", "password": "p"}
    folder = v1_folder(tmp_path, {"docker": {"baseImage": "other.example.com/team/img:1.2",
                                             "baseImageRegistry": registry}})
    with pytest.raises(SpecError, match=r"^azureml_environment\.json: spec\.docker\.baseImage .* names registry "
                       r"other\.example\.com but spec\.docker\.baseImageRegistry\.address is myacr\.azurecr\.io"):
        import_azureml(folder)


def test_registry_without_password_names_placeholders_in_the_command(tmp_path):
    registry = {"address": "r.example:5000", "username": None, "password": None}
    docker = {"baseImage": "team/img:1.2", "baseImageRegistry": registry}
    env, warnings = only_environment(v1_folder(tmp_path, {"docker": docker}), include_secret=True)
    assert any("no password in azureml_environment.json" in w and w.endswith(
        "--docker-server=r.example:5000 --docker-username=<username> --docker-password=<password>")
        for w in warnings), warnings


def test_registry_password_goes_into_a_secret_only_when_asked(tmp_path):
    registry = {"address": None, "username": "myacr", "password": "s3cr3t-Pa55"}
    docker = {"baseImage": "myacr.azurecr.io/base/train:1.0", "baseImageRegistry": registry}
    folder = v1_folder(tmp_path, {"docker": docker})
    manifests, warnings = import_azureml(folder, include_secret=True)
    secret, env = manifests
    assert secret["kind"] == "Secret" and secret["type"] == "kubernetes.io/basic-auth"
    assert secret["metadata"]["name"] == "sklearn-train-env-registry"
    assert secret["stringData"] == {"username": "myacr", "password": "s3cr3t-Pa55"}
    assert env["spec"]["docker"]["baseImageRegistry"] == {"address": "myacr.azurecr.io",
                                                          "secretName": "sklearn-train-env-registry"}
    assert "s3cr3t-Pa55" not in json.dumps(env) and "s3cr3t-Pa55" not in yaml.safe_dump(env)
    assert any("Secret sklearn-train-env-registry" in w and "password" in w for w in warnings)
    assert list(yaml.safe_load_all(azureml.dump_manifests(manifests))) == manifests


def test_unsupported_fields_are_warned_about_never_dropped(tmp_path):
    folder = v1_folder(tmp_path, {
        "spark": {"packages": [{"group": "com.x", "artifact": "y"}]}, "r": {"rVersion": "4.0"},
        "inferencingStackVersion": "latest", "docker": {"arguments": ["--ipc=host"], "sharedVolumes": False},
        "python": {"baseCondaEnvironment": "base"}, "futureField": 1})
    definition = json.loads((folder / "azureml_environment.json").read_text())
    definition["environmentVariables"] = {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"}
    (folder / "azureml_environment.json").write_text(json.dumps(definition))
    env, warnings = only_environment(folder)
    text = "\n".join(warnings)
    for field in ("spark.packages", "r.rVersion", "inferencingStackVersion", "docker.arguments",
                  "docker.sharedVolumes", "python.baseCondaEnvironment", "futureField", "EXAMPLE_ENV_VAR"):
        assert f" {field}" in text, field
    assert "environmentVariables" not in env["spec"]


def test_user_managed_ignores_conda_with_a_warning(tmp_path):
    folder = v1_folder(tmp_path, {"python": {"userManagedDependencies": True,
                                             "interpreterPath": "/opt/conda/bin/python"}})
    env, warnings = only_environment(folder)
    assert env["spec"]["python"] == {"userManagedDependencies": True,
                                     "interpreterPath": "/opt/conda/bin/python"}
    assert "conda" not in env["spec"]
    assert any(w.startswith("conda_dependencies.yml: ignored") for w in warnings)


def test_base_dockerfile_wins_over_base_image(tmp_path):
    folder = v1_folder(tmp_path, BaseDockerfile="FROM ubuntu:22.04\nRUN apt-get update\n")
    env, warnings = only_environment(folder)
    assert env["spec"]["docker"] == {"dockerfile": (folder / "BaseDockerfile").read_text(), "shmSize": "2Gi"}
    assert any("docker.baseImage" in w and "ignored" in w for w in warnings)


@pytest.mark.parametrize(("docker", "quantity"), [("2g", "2Gi"), ("512m", "512Mi"), ("1.5G", "1.5Gi"),
                                                  ("64kb", "64Ki"), ("1073741824", 1073741824), (1024, 1024)])
def test_shm_size_conversion(docker, quantity):
    assert azureml_common.shm_to_quantity(docker, "f") == quantity
    assert azureml_common.shm_to_quantity(azureml_common.quantity_to_shm(quantity), "f") == quantity


def test_decimal_quantity_exports_as_bytes():
    assert azureml_common.quantity_to_shm("2G") == "2000000000"
    assert azureml_common.quantity_to_shm("lots") is None


NAMES = [("AzureML-Minimal", "azureml-minimal"), ("my_env.v2", "my-env-v2"), ("__x__", "x"),
         ("a" * 80, "a" * 63), ("Ünïcode env", "n-code-env")]


@pytest.mark.parametrize(("name", "expected"), NAMES)
def test_k8s_name(name, expected):
    assert azureml.k8s_name(name) == expected


def manifest(spec: dict, name: str = "train-env", **annotations: str) -> dict:
    return {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "annotations": {NAME_ANNOTATION: name, **annotations}}, "spec": spec}


ROUND_TRIPS: dict[str, list[dict]] = {
    "v1": [
        {"python": {"version": "3.11"}, "conda": {"environmentYaml": CONDA},
         "docker": {"baseImage": "python:3.11-slim", "shmSize": "8Gi",
                    "baseImageRegistry": {"address": "r.example:5000", "secretName": "train-env-registry"}},
         "environmentVariables": {"OMP_NUM_THREADS": "4"}},
        {"python": {"userManagedDependencies": True, "interpreterPath": "/opt/conda/bin/python"},
         "docker": {"dockerfile": "FROM nvcr.io/nvidia/pytorch:24.05-py3\nRUN pip install flash-attn\n"}},
    ],
    "v2": [
        {"description": "vision training", "python": {"version": "3.11"}, "conda": {"environmentYaml": CONDA},
         "docker": {"baseImage": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"}},
        {"docker": {"dockerfile": "FROM ubuntu:22.04\nRUN apt-get update\n"}},
    ],
}


@pytest.mark.parametrize(("fmt", "spec"), [(f, s) for f, specs in ROUND_TRIPS.items() for s in specs])
def test_export_then_import_gives_the_same_environment(tmp_path, fmt, spec):
    annotations = {VERSION_ANNOTATION: "7"}
    if fmt == "v2":
        annotations[TAGS_ANNOTATION] = '{"team": "vision"}'
    original = manifest(spec, **annotations)
    export_azureml(original, tmp_path, fmt)
    (env,) = [m for m in import_azureml(tmp_path)[0] if m["kind"] == "Environment"]
    assert EnvironmentSpec.model_validate(env["spec"]) == EnvironmentSpec.model_validate(spec)
    assert env["metadata"] == original["metadata"]


def test_structured_conda_round_trips_to_the_same_image(tmp_path):
    conda = {"channels": ["pytorch"], "packages": ["pytorch=2.3"], "pipPackages": ["rich"]}
    spec = {"python": {"version": "3.12"}, "conda": conda, "docker": {"baseImage": "ubuntu:22.04"}}
    export_azureml(manifest(spec), tmp_path, "v1")
    env, _ = only_environment(tmp_path)
    assert render_context(EnvironmentSpec.model_validate(env["spec"])).hash == \
        render_context(EnvironmentSpec.model_validate(spec)).hash


def test_export_v1_folder_layout_and_pip_conversion(tmp_path):
    spec = {"pip": {"requirements": "torch==2.4.0  # gpu\n# comment\nnumpy \\\n  <2\n", "packages": ["rich"],
                    "indexUrl": "https://pypi.example.com/simple"}, "docker": {"baseImage": "python:3.11"}}
    warnings = export_azureml(manifest(spec), tmp_path, "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [azureml_common.V1_DEFINITION, azureml_common.V1_CONDA]
    conda = yaml.safe_load((tmp_path / "conda_dependencies.yml").read_text())
    assert conda["dependencies"][:2] == ["python", "pip"]
    assert conda["dependencies"][2]["pip"] == ["--index-url https://pypi.example.com/simple", "torch==2.4.0",
                                              "numpy    <2", "rich"]
    assert any(w.startswith("spec.pip: exported into the pip list") for w in warnings)
    definition = json.loads((tmp_path / "azureml_environment.json").read_text())
    assert definition["python"]["userManagedDependencies"] is False
    assert definition["docker"]["baseImage"] == "python:3.11"


def test_export_warns_about_what_azure_ml_cannot_hold(tmp_path):
    spec = {"docker": {"dockerfileFrom": {"name": "base", "key": "Dockerfile"}, "shmSize": "2Gi"},
            "environmentVariables": {"A": "1"}, "bootstrap": {"script": "echo"},
            "build": {"builder": "buildah"},
            "secretEnv": [{"name": "TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}],
            "secretEnvFrom": [{"secretName": "wandb"}]}
    text = "\n".join(export_azureml(manifest(spec), tmp_path))
    for expected in ("secretEnv TOKEN", "secretEnvFrom Secret wandb", "bootstrap", "spec.build",
                     "dockerfileFrom", "environmentVariables A", "shmSize", "default python:3.11-slim"):
        assert expected in text, expected
    assert yaml.safe_load((tmp_path / "environment.yml").read_text())["image"] == "python:3.11-slim-bookworm"


def test_export_v2_dockerfile_with_packages_writes_the_rendered_context(tmp_path):
    spec = {"docker": {"dockerfile": "FROM ubuntu:22.04\n"}, "pip": {"packages": ["rich"]}}
    warnings = export_azureml(manifest(spec), tmp_path, "v2")
    context = tmp_path / "docker-context"
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "kenv-lock.py", "requirements.txt"]
    assert yaml.safe_load((tmp_path / "environment.yml").read_text())["build"] == {
        "path": "docker-context", "dockerfile_path": "Dockerfile"}
    assert any("rendered build context" in w for w in warnings)
    _, reimport_warnings = import_azureml(tmp_path)
    assert any("requirements.txt" in w and "not carried over" in w for w in reimport_warnings)


def test_export_refuses_bad_input(tmp_path):
    with pytest.raises(SpecError, match="format must be v1 or v2"):
        export_azureml(manifest({}), tmp_path, "v3")
    with pytest.raises(SpecError, match="^manifest: kind"):
        export_azureml({"kind": "Pod"}, tmp_path)
    with pytest.raises(SpecError, match=r"^manifest: spec\.pip\.packages\[0\]"):
        export_azureml(manifest({"pip": {"packages": ["a\nb"]}}), tmp_path)


J, C = r"^azureml_environment\.json: ", r"^conda_dependencies\.yml: "
MALFORMED = [
    ({"azureml_environment.json": "{not json"}, J + r"not valid JSON \(line 1"),
    ({"azureml_environment.json": "[]"}, J + r"must be a JSON object"),
    ({"python": "3.8"}, J + r'python must be a mapping, got "3\.8"$'),
    ({"python": {"userManagedDependencies": "yes"}},
     J + r'python\.userManagedDependencies must be a boolean, got "yes"$'),
    ({"docker": {"baseImage": 42}}, J + r"docker\.baseImage must be a string, got 42$"),
    ({"environmentVariables": {"N": 4}}, J + r"environmentVariables\.N must be a string"),
    ({"docker": {"shmSize": "lots"}}, J + r'docker\.shmSize must be like 2g.*"lots"$'),
    ({"docker": {"baseImage": "Bad Image"}}, J + r"spec\.docker\.baseImage: String"),
    ({"environmentVariables": {"BAD-NAME": "1"}}, J + r"spec\.environmentVariables: "),
    ({"name": "!!!"}, J + r"name '!!!' has no letters or digits"),
    ({"docker": {"baseImage": "python:3.11", "baseImageRegistry": {"username": "u", "password": "p"}}},
     J + r"docker\.baseImageRegistry\.address is required"),
    ({"conda_dependencies.yml": "dependencies: [\n"}, C + r"not valid YAML \(line \d+\)$"),
    ({"conda_dependencies.yml": "dependencies: numpy\n"}, C + r"dependencies must be a list"),
    ({"conda_dependencies.yml": "- numpy\n"}, C + r"must be a conda environment mapping"),
    ({"conda_dependencies.yml": "#" * (1024 * 1024 + 1)}, C + r"\d+ bytes is larger than"),
]


@pytest.mark.parametrize(("change", "pattern"), MALFORMED)
def test_malformed_v1_folder_gives_one_line_error(tmp_path, change, pattern):
    files = {k: v for k, v in change.items() if "." in k}
    folder = v1_folder(tmp_path, {k: v for k, v in change.items() if k not in files}, **files)
    with pytest.raises(SpecError, match=pattern) as info:
        import_azureml(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("document", "pattern"), [
    ({"name": "x", "image": "ubuntu:22.04", "conda_file": "missing.yml"}, r"^missing\.yml: file not found"),
    ({"name": "x", "image": "ubuntu", "build": {"path": "ctx"}}, r"^env\.yaml: build cannot be combined"),
    ({"name": "x", "build": {"path": "https://github.com/x/y.git"}}, r"^env\.yaml: build\.path .* is remote"),
    ({"name": "x", "build": {"path": "ctx"}}, r"^ctx/Dockerfile: file not found"),
    ({"name": "x", "image": ["ubuntu"]}, r'^env\.yaml: image must be a string, got \["ubuntu"\]$'),
    ({"name": "x", "image": "ubuntu", "os_type": "windows"}, r"^env\.yaml: os_type 'windows' is not"),
    ({"name": "x", "conda_file": "c.yml"}, r"^env\.yaml: needs image or build$"),
])
def test_malformed_v2_file_gives_one_line_error(tmp_path, document, pattern):
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(SpecError, match=pattern):
        import_azureml(tmp_path / "env.yaml")


def test_missing_or_unrecognised_inputs(tmp_path):
    with pytest.raises(SpecError, match="no such file or directory"):
        import_azureml(tmp_path / "nope")
    with pytest.raises(SpecError, match="expected azureml_environment.json or one Azure ML v2 environment"):
        import_azureml(tmp_path)
    (tmp_path / "other.yml").write_text("foo: bar\n")
    with pytest.raises(SpecError, match=r"^other\.yml: neither an Azure ML v2 environment"):
        import_azureml(tmp_path / "other.yml")
    (tmp_path / "requirements.txt").write_bytes(b"numpy\xff\n")
    with pytest.raises(SpecError, match=r"^requirements\.txt: not UTF-8 text"):
        import_azureml(tmp_path / "requirements.txt", "x")


def test_export_warns_about_every_field_v1_cannot_hold(tmp_path):
    spec = {"description": "vision", "docker": {"baseImage": "python:3.11", "shmSize": "100m"},
            "conda": {"environmentYaml": "# pinned for CUDA 12\n" + CONDA}, "pip": {"requirements": "rich  # ui\n"}}
    text = "\n".join(export_azureml(manifest(spec, **{TAGS_ANNOTATION: '{"team": "vision"}'}), tmp_path, "v1"))
    for expected in ("spec.description", f"metadata.annotations[{TAGS_ANNOTATION}]", '{"team": "vision"}',
                     "spec.docker.shmSize 100m", "spec.conda.environmentYaml and spec.pip.requirements: comments"):
        assert expected in text, expected
    assert json.loads((tmp_path / "azureml_environment.json").read_text())["docker"]["shmSize"] is None


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_export_says_the_uv_installer_is_not_carried_over(tmp_path, fmt):
    spec = {"docker": {"baseImage": "python:3.11"}, "pip": {"packages": ["rich"], "installer": "uv"}}
    assert any("spec.pip.installer uv is kenv-only" in w for w in export_azureml(manifest(spec), tmp_path, fmt))
    assert not any("installer" in w for w in export_azureml(manifest({**spec, "pip": {"packages": ["rich"]}}),
                                                              tmp_path / "pip", fmt))


def test_v2_export_writes_the_joined_image_and_says_the_address_is_gone(tmp_path):
    spec = {"docker": {"baseImage": "/team/img:1.2",
                       "baseImageRegistry": {"address": "myacr.azurecr.io", "secretName": "pull"}}}
    warnings = export_azureml(manifest(spec), tmp_path, "v2")
    assert yaml.safe_load((tmp_path / "environment.yml").read_text())["image"] == "myacr.azurecr.io/team/img:1.2"
    assert any("no registry field; exported the image as myacr.azurecr.io/team/img:1.2" in w for w in warnings)
    assert any("credentials (Secret pull) are not exported" in w for w in warnings)


def test_v1_export_keeps_the_relative_image_next_to_the_address(tmp_path):
    spec = {"docker": {"baseImage": "team/img:1.2",
                       "baseImageRegistry": {"address": "myacr.azurecr.io", "secretName": "train-env-registry"}}}
    export_azureml(manifest(spec), tmp_path, "v1")
    docker = json.loads((tmp_path / "azureml_environment.json").read_text())["docker"]
    assert (docker["baseImage"], docker["baseImageRegistry"]["address"]) == ("team/img:1.2", "myacr.azurecr.io")
    env, _ = only_environment(tmp_path)
    assert EnvironmentSpec.model_validate(env["spec"]) == EnvironmentSpec.model_validate(spec)


def test_export_into_an_sdk_folder_with_a_stale_base_dockerfile_replaces_it(tmp_path):
    folder = tmp_path / "env"
    shutil.copytree(STALE, folder)
    warnings = export_azureml(manifest({"docker": {"baseImage": "python:3.11"}}), folder, "v1")
    # Environment.load_from_directory reads BaseDockerfile and conda_dependencies.yml whenever they exist.
    assert sorted(p.name for p in folder.iterdir()) == ["azureml_environment.json"]
    assert json.loads((folder / "azureml_environment.json").read_text())["docker"]["baseImage"] == "python:3.11"
    assert not any("kept" in w for w in warnings)
    env, _ = only_environment(folder)
    assert env["spec"]["docker"] == {"baseImage": "python:3.11"}


def test_export_switching_format_removes_the_other_formats_files(tmp_path):
    export_azureml(manifest({"docker": {"dockerfile": "FROM ubuntu:22.04\n"}, "pip": {"packages": ["rich"]}}),
                   tmp_path, "v2")
    export_azureml(manifest({"docker": {"baseImage": "python:3.11"}}), tmp_path, "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["azureml_environment.json"]
    export_azureml(manifest(ROUND_TRIPS["v1"][0]), tmp_path, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conda.yml", "environment.yml"]
    env, _ = only_environment(tmp_path)
    assert env["spec"]["docker"]["baseImage"] == "r.example:5000/python:3.11-slim"


def test_export_keeps_files_it_does_not_own_and_names_them(tmp_path):
    (tmp_path / "README.md").write_text("notes\n")
    (tmp_path / "environment.yml").write_text(CONDA)  # a conda file, not an Azure ML environment
    (tmp_path / "docker-context").mkdir()
    (tmp_path / "docker-context" / "Dockerfile").write_text("FROM mine\n")  # no v2 document: the user's
    warnings = export_azureml(manifest({"docker": {"baseImage": "python:3.11"}}), tmp_path, "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "azureml_environment.json", "docker-context",
                                                          "environment.yml"]
    assert (tmp_path / "environment.yml").read_text() == CONDA
    assert (tmp_path / "docker-context" / "Dockerfile").read_text() == "FROM mine\n"
    kept = "kept README.md, docker-context/Dockerfile, environment.yml: not written by kenv's export"
    assert any(kept in w for w in warnings), warnings
    assert not any("removed" in w for w in warnings), warnings


def test_export_names_what_it_removed(tmp_path):
    export_azureml(manifest({"docker": {"dockerfile": "FROM ubuntu:22.04\n"}}), tmp_path, "v1")
    warnings = export_azureml(manifest({"docker": {"baseImage": "python:3.11"}}), tmp_path, "v1")
    assert not (tmp_path / "BaseDockerfile").exists()
    removed = "removed BaseDockerfile, azureml_environment.json, left by an earlier Azure ML export"
    assert any(removed in w for w in warnings), warnings


def test_a_lone_base_dockerfile_is_the_users_and_refused_for_a_v1_export(tmp_path):
    (tmp_path / "BaseDockerfile").write_text("FROM mine\n")  # no azureml_environment.json beside it
    with pytest.raises(SpecError, match="BaseDockerfile was not written by kenv's export, and Azure ML would read"):
        export_azureml(manifest({"docker": {"baseImage": "python:3.11"}}), tmp_path, "v1")
    assert (tmp_path / "BaseDockerfile").read_text() == "FROM mine\n"


@pytest.mark.parametrize(("files", "spec", "blocking"), [
    ({"environment.yml": CONDA}, {"docker": {"baseImage": "python:3.11"}}, "environment.yml"),
    ({"docker-context/data.csv": "a,b\n"}, {"docker": {"dockerfile": "FROM ubuntu:22.04\n"}},
     "docker-context/data.csv"),
])
def test_export_refuses_to_overwrite_or_build_with_files_it_does_not_own(tmp_path, files, spec, blocking):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(content)
    (tmp_path / "conda_dependencies.yml").write_text("stale\n")
    with pytest.raises(SpecError, match=f"{blocking} was not written by kenv's export.*export into an empty folder"):
        export_azureml(manifest(spec), tmp_path, "v2")
    assert (tmp_path / "conda_dependencies.yml").exists()  # refused before removing anything
    assert all((tmp_path / name).read_text() == content for name, content in files.items())


def test_export_refuses_tags_that_are_not_a_json_object(tmp_path):
    with pytest.raises(SpecError, match=r"^manifest: metadata\.annotations\[kenv\.dev/azureml-tags\] must be"):
        export_azureml(manifest({}, **{TAGS_ANNOTATION: "team=vision"}), tmp_path, "v2")
    assert list(tmp_path.iterdir()) == []


def test_export_warns_that_conda_channel_credentials_stay_behind(tmp_path):
    spec = {"conda": {"packages": ["numpy"], "channelCredentials": [{"host": "conda.example.com",
                                                                     "secretName": "conda-creds"}]}}
    text = "\n".join(export_azureml(manifest(spec), tmp_path))
    assert "spec.conda.channelCredentials (conda.example.com) cannot be exported" in text
    assert "conda-creds" not in (tmp_path / "conda.yml").read_text()


def test_a_conda_build_exports_again_into_its_own_folder(tmp_path):
    """The v2 docker-context of a conda Environment holds kenv's installer script and pip list: its own files."""
    spec = {"docker": {"dockerfile": "FROM python:3.11-slim\n"}, "conda": {"packages": ["numpy"],
                                                                           "pipPackages": ["rich"]}}
    export_azureml(manifest(spec), tmp_path)
    assert {"kenv-conda.py", "conda-requirements.txt"} <= {p.name for p in (tmp_path / "docker-context").iterdir()}
    export_azureml(manifest(spec), tmp_path)  # refused before: "was not written by kenv's export"
