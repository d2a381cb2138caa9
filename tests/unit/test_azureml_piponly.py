"""import-azureml's review of a conda part (what it builds, end-of-life python, Anaconda's channels) and
--pip-only, which imports a conda part of only python, pip and a pip list as spec.pip."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from kenv.azureml import anaconda_channel, import_azureml, python_end_of_life, review_conda
from kenv.azureml_export import export_azureml
from kenv.cli import main
from kenv.errors import SpecError
from kenv.models import EnvironmentSpec
from kenv.render import render_context

ROOT = Path(__file__).resolve().parents[2]
# Environment("private-train").save_to_directory (azureml-core 1.61.0): conda_dependencies.yml is the SDK's default
# conda file (python=3.8.13, channels anaconda and conda-forge, pip list azureml-defaults); the base image is
# team/img:1.2 of myacr.azurecr.io.
SDK = ROOT / "tests" / "unit" / "fixtures" / "azureml" / "v1-private-registry"
V1, V2 = ROOT / "examples" / "azureml" / "v1-sklearn", ROOT / "examples" / "azureml" / "v2-pytorch"
TODAY = date(2026, 11, 27)
IMAGE = "myacr.azurecr.io/team/img:1.2"
SDK_SUMMARY = ("conda_dependencies.yml: the Environment builds a conda environment in /opt/kenv/env from channels "
               "anaconda, conda-forge, with python=3.8.13, 0 other conda packages and 1 pip package installed by "
               "the environment's own pip")
SDK_SUGGESTION = ("conda_dependencies.yml: the conda part is only python, pip and a pip list: --pip-only would "
                  f"import the pip list as spec.pip, installed with python3 of the base image {IMAGE} instead of a "
                  "conda environment (it warns what changes)")
SDK_EOL = ("conda_dependencies.yml: python=3.8.13 pins python 3.8, end-of-life since 2024-10-07 (no more security "
           "fixes): pin 3.11 or later")
SDK_ANACONDA = ("conda_dependencies.yml: channel anaconda: subject to Anaconda's terms of service; use conda-forge "
                "or your mirror")
SDK_PIP_ONLY = [
    "conda_dependencies.yml: --pip-only: python=3.8.13 is dropped: the build installs the pip list with python3 of "
    f"the base image {IMAGE}, which must exist there, have pip and be compatible with the pins (written for "
    "python=3.8.13); kenv cannot inspect the image at import time",
    "conda_dependencies.yml: --pip-only: channels anaconda, conda-forge not used (no conda environment is built)",
]


def run(path: Path, name: str | None = None, **options: object) -> tuple[dict, list[str], list[str]]:
    """The Environment of an import, its notes and its warnings."""
    notes: list[str] = []
    manifests, warnings = import_azureml(path, name, today=TODAY, notes=notes, **options)  # type: ignore[arg-type]
    return manifests[-1], notes, warnings


def conda_file(tmp_path: Path, text: str, name: str = "env.yml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_sdk_default_conda_file_is_summarised_with_both_warnings_and_the_pip_only_offer():
    env, notes, warnings = run(SDK)
    assert notes == [SDK_SUMMARY, SDK_SUGGESTION]
    assert SDK_EOL in warnings and SDK_ANACONDA in warnings
    assert env["spec"]["python"] == {"version": "3.8.13"} and "environmentYaml" in env["spec"]["conda"]


def test_sdk_default_with_pip_only_is_a_pip_environment_on_the_same_base_image():
    env, notes, warnings = run(SDK, pip_only=True)
    spec = env["spec"]
    assert spec["pip"] == {"packages": ["azureml-defaults"]}
    assert "conda" not in spec and "python" not in spec  # no python.version: alone it would mean a conda solve
    assert spec["docker"]["baseImage"] == "team/img:1.2"
    assert notes == []  # nothing conda left to describe
    assert warnings[-2:] == SDK_PIP_ONLY
    assert SDK_EOL not in warnings and SDK_ANACONDA not in warnings
    files = render_context(EnvironmentSpec.model_validate(spec)).files
    assert "environment.yml" not in files
    assert files["requirements.txt"] == "azureml-defaults\n"
    assert f"FROM {IMAGE}\n" in files["Dockerfile"]
    assert "python3 -m pip install" in files["Dockerfile"] and "/opt/kenv/env" not in files["Dockerfile"]


def test_cli_prints_notes_then_warnings_and_pip_only_changes(capsys):
    assert main(["import-azureml", str(SDK)]) == 0
    err = capsys.readouterr().err
    assert f"kenv: note: {SDK_SUMMARY}\nkenv: note: {SDK_SUGGESTION}\nkenv: warning: " in err
    assert f"kenv: warning: {SDK_ANACONDA}\n" in err
    assert main(["import-azureml", "--pip-only", str(SDK)]) == 0
    captured = capsys.readouterr()
    assert "".join(f"kenv: warning: {w}\n" for w in SDK_PIP_ONLY) in captured.err
    assert "kenv: note:" not in captured.err
    (env,) = yaml.safe_load_all(captured.out)
    assert env["spec"]["pip"] == {"packages": ["azureml-defaults"]}


def test_pip_only_refuses_other_conda_packages_naming_them(tmp_path, capsys):
    path = conda_file(tmp_path, "name: train\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                                "  - numpy=1.26\n  - pip\n  - pip: [rich]\n")
    message = ("env.yml: --pip-only takes a conda part of only python, pip and a pip list; this one also has conda "
               "package numpy=1.26: drop --pip-only to build the conda environment")
    with pytest.raises(SpecError) as info:
        import_azureml(path, pip_only=True)
    assert str(info.value) == message
    assert main(["import-azureml", "--pip-only", str(path)]) == 2
    assert capsys.readouterr().err == f"kenv: {message}\n"
    _, notes, _ = run(path)  # not offered either
    assert not any("--pip-only" in n for n in notes)


@pytest.mark.parametrize(("path", "found"), [
    (V1, "conda packages scikit-learn=1.5.1, pandas=2.2.2"),
    (V2, "conda packages pytorch=2.3.1, pytorch-cuda=12.1, torchvision=0.18.1"),
])
def test_pip_only_refuses_the_samples(path, found):
    with pytest.raises(SpecError, match=f"also has {found}: drop --pip-only"):
        import_azureml(path, pip_only=True)


def test_pip_only_refuses_conda_file_keys_it_would_drop(tmp_path):
    path = conda_file(tmp_path, "name: t\nvariables: {OMP_NUM_THREADS: '1'}\n"
                                "dependencies: [python=3.11, pip: [rich]]\n")
    with pytest.raises(SpecError, match=r"also has key variables: drop --pip-only"):
        import_azureml(path, pip_only=True)


def test_pip_options_map_to_the_pip_section(tmp_path):
    path = conda_file(tmp_path, "name: t\ndependencies:\n  - python=3.12\n  - pip=24.0\n  - pip:\n"
                                "    - --index-url https://pypi.example.com/simple\n"
                                "    - --extra-index-url https://extra.example.com/simple\n"
                                "    - torch==2.4.0\n    - pkg @ https://files.example.com/pkg-1.0-py3-none-any.whl\n")
    env, _, warnings = run(path, pip_only=True)
    assert env["spec"] == {"pip": {"indexUrl": "https://pypi.example.com/simple",
                                   "extraIndexUrls": ["https://extra.example.com/simple"],
                                   "packages": ["torch==2.4.0", "pkg @ https://files.example.com/pkg-1.0-py3-none-any.whl"]}}
    assert warnings[0].startswith("env.yml: --pip-only: python=3.12 and pip=24.0 are dropped: the build installs "
                                  "the pip list with python3 of kenv's default base image (python:3.11-slim-bookworm "
                                  "unless the operator's KENV_DEFAULT_BASE_IMAGE says otherwise)")
    requirements = render_context(EnvironmentSpec.model_validate(env["spec"])).files["requirements.txt"]
    assert requirements.splitlines() == ["--index-url https://pypi.example.com/simple",
                                         "--extra-index-url https://extra.example.com/simple", "torch==2.4.0",
                                         "pkg @ https://files.example.com/pkg-1.0-py3-none-any.whl"]


def test_other_pip_options_keep_the_lines_as_a_requirements_body(tmp_path):
    digest = "sha256:" + "a" * 64
    lines = ["-i https://a.example.com/simple", "--index-url https://b.example.com/simple",
             "--find-links https://wheels.example.com/", f"numpy==1.26.4 --hash={digest}",
             "--extra-index-url https://extra.example.com/simple"]
    path = conda_file(tmp_path, yaml.safe_dump({"name": "t", "dependencies": ["python", {"pip": lines}]}))
    env, _, warnings = run(path, pip_only=True)
    assert env["spec"] == {"pip": {"extraIndexUrls": ["https://extra.example.com/simple"],
                                   "requirements": "\n".join(lines[:4]) + "\n"}}  # two index URLs: kept in order
    assert warnings[0].startswith("env.yml: --pip-only: no conda environment is built: the build installs")
    EnvironmentSpec.model_validate(env["spec"])


def test_v2_conda_file_and_inline_conda_file_take_pip_only(tmp_path):
    conda = {"name": "c", "channels": ["conda-forge"],
             "dependencies": ["python=3.11", "pip", {"pip": ["rich==13.7.1"]}]}
    (tmp_path / "conda.yml").write_text(yaml.safe_dump(conda))
    v2 = {"$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json", "name": "web",
          "image": "python:3.11-slim", "conda_file": "conda.yml"}
    (tmp_path / "environment.yml").write_text(yaml.safe_dump(v2))
    env, notes, _ = run(tmp_path / "environment.yml")
    assert notes[-1].startswith("conda.yml: the conda part is only python, pip and a pip list: --pip-only would "
                                "import the pip list as spec.pip, installed with python3 of the base image "
                                "python:3.11-slim instead")
    env, notes, warnings = run(tmp_path / "environment.yml", pip_only=True)
    assert env["spec"] == {"pip": {"packages": ["rich==13.7.1"]}, "docker": {"baseImage": "python:3.11-slim"}}
    assert warnings == [
        "conda.yml: --pip-only: python=3.11 is dropped: the build installs the pip list with python3 of the base "
        "image python:3.11-slim, which must exist there, have pip and be compatible with the pins (written for "
        "python=3.11); kenv cannot inspect the image at import time",
        "conda.yml: --pip-only: channel conda-forge not used (no conda environment is built)"]
    (tmp_path / "environment.yml").write_text(yaml.safe_dump({**v2, "conda_file": conda}))
    inline, _, warnings = run(tmp_path / "environment.yml", pip_only=True)
    assert inline["spec"] == env["spec"]
    assert warnings[0].startswith("environment.yml: conda_file: --pip-only: python=3.11 is dropped")


def test_pip_only_keeps_an_absolute_interpreter_path_and_installs_with_it(tmp_path):
    folder = tmp_path / "env"
    shutil.copytree(SDK, folder)
    definition = json.loads((folder / "azureml_environment.json").read_text())
    definition["python"]["interpreterPath"] = "/opt/conda/bin/python"
    (folder / "azureml_environment.json").write_text(json.dumps(definition))
    env, _, warnings = run(folder, pip_only=True)
    assert env["spec"]["python"] == {"interpreterPath": "/opt/conda/bin/python"}
    assert f"the pip list with /opt/conda/bin/python of the base image {IMAGE}, which must exist" in warnings[-2]
    dockerfile = render_context(EnvironmentSpec.model_validate(env["spec"])).files["Dockerfile"]
    assert "/opt/conda/bin/python -m pip install" in dockerfile


def test_pip_only_without_a_conda_part_is_a_no_op_with_a_note(tmp_path):
    (tmp_path / "requirements.txt").write_text("rich\n")
    env, notes, warnings = run(tmp_path / "requirements.txt", "t", pip_only=True)
    assert env["spec"] == {"pip": {"requirements": "rich\n"}} and warnings == []
    assert notes == ["--pip-only: requirements.txt imports no conda environment; nothing to translate"]
    (tmp_path / "environment.yml").write_text(yaml.safe_dump({"name": "img", "image": "ubuntu:22.04"}))
    env, notes, _ = run(tmp_path / "environment.yml", pip_only=True)
    assert env["spec"] == {"docker": {"baseImage": "ubuntu:22.04"}} and len(notes) == 1


def test_pip_only_with_an_empty_pip_list_says_nothing_is_installed(tmp_path):
    env, notes, warnings = run(conda_file(tmp_path, "name: t\ndependencies: [python=3.11]\n"))
    assert not any("--pip-only" in n for n in notes)  # nothing for pip to install: not offered
    env, _, warnings = run(tmp_path / "env.yml", pip_only=True)
    assert env["spec"] == {}
    assert warnings == ["env.yml: --pip-only: python=3.11 is dropped and the pip list is empty: nothing is installed"]


@pytest.mark.parametrize(("channels", "shown"), [
    ([], "channel conda-forge (conda-forge added last by kenv)"),
    (["pytorch"], "channels pytorch, conda-forge (conda-forge added last by kenv)"),
    (["pytorch", "nodefaults"], "channel pytorch (`nodefaults`: no channel added)"),
    (["https://conda.anaconda.org/conda-forge"], "channel https://conda.anaconda.org/conda-forge,"),
])
def test_summary_names_the_channels_the_build_solves_with(tmp_path, channels, shown):
    text = yaml.safe_dump({"name": "t", "channels": channels, "dependencies": ["python", "numpy"]})
    _, notes, warnings = run(conda_file(tmp_path, text))
    assert f"from {shown}" in notes[0]
    assert notes[0].endswith("with python unpinned, 1 other conda package and 0 pip packages installed by the "
                             "environment's own pip")
    assert warnings == []  # no python pin, no Anaconda channel


@pytest.mark.parametrize(("version", "today", "end"), [
    ("3.8.13", TODAY, date(2024, 10, 7)),
    ("3.9", TODAY, date(2025, 10, 31)),
    ("3.10", date(2026, 10, 30), None),
    ("3.10", date(2026, 10, 31), date(2026, 10, 31)),
    ("3.10.13", TODAY, date(2026, 10, 31)),
    ("3.11", TODAY, None),
    ("3.11", date(2027, 11, 1), date(2027, 10, 31)),
    ("3.6", date(2020, 1, 1), None),
    ("3", TODAY, None),
    ("3.99", TODAY, None),
])
def test_end_of_life_depends_on_the_date_passed_in(version, today, end):
    assert python_end_of_life(version, today) == end


def test_review_takes_the_date_it_is_given():
    spec = EnvironmentSpec.model_validate({"conda": {"environmentYaml": "dependencies: [python=3.10, pip: [rich]]\n"}})
    assert review_conda(spec, "f", date(2026, 1, 1))[1] == []
    assert review_conda(spec, "f", date(2027, 11, 1))[1] == [
        "f: python=3.10 pins python 3.10, end-of-life since 2026-10-31 (no more security fixes): pin 3.12 or later"]
    assert review_conda(EnvironmentSpec.model_validate({"pip": {"packages": ["rich"]}}), "f", TODAY) == ([], [])


@pytest.mark.parametrize(("channel", "anaconda"), [
    ("anaconda", True), ("defaults", True), ("main", True), ("r", True), ("msys2", True), ("pkgs/main", True),
    ("https://repo.anaconda.com/pkgs/main", True), ("https://repo.anaconda.com/pkgs/r/", True),
    ("https://conda.anaconda.org/anaconda", True), ("http://conda.anaconda.org/anaconda/linux-64", True),
    ("conda-forge", False), ("nodefaults", False), ("pytorch", False), ("nvidia", False),
    ("https://conda.anaconda.org/conda-forge", False), ("https://mirror.example.com/anaconda", False),
])
def test_anaconda_channels(channel, anaconda):
    assert anaconda_channel(channel) is anaconda


def test_anaconda_channel_prefixes_of_packages_are_flagged_too(tmp_path):
    text = ("name: t\nchannels: [conda-forge, defaults]\n"
            "dependencies: [python=3.12, anaconda::numpy, conda-forge::scipy]\n")
    _, _, warnings = run(conda_file(tmp_path, text))
    assert warnings == ["env.yml: channel defaults, package anaconda::numpy: subject to Anaconda's terms of "
                        "service; use conda-forge or your mirror"]


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_exported_pip_environment_imports_back_the_same_with_pip_only(tmp_path, fmt):
    spec = {"pip": {"indexUrl": "https://pypi.example.com/simple",
                    "extraIndexUrls": ["https://extra.example.com/simple"], "packages": ["rich==13.7.1", "torch"]},
            "docker": {"baseImage": "python:3.11-slim"}}
    manifest = {"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                "metadata": {"name": "train", "annotations": {"kenv.dev/azureml-name": "train"}}, "spec": spec}
    export_azureml(manifest, tmp_path, fmt)
    conda_back, _, _ = run(tmp_path)  # without --pip-only: Azure ML's conda form, as before
    assert "conda" in conda_back["spec"]
    env, _, _ = run(tmp_path, pip_only=True)
    assert EnvironmentSpec.model_validate(env["spec"]) == EnvironmentSpec.model_validate(spec)
    assert render_context(EnvironmentSpec.model_validate(env["spec"])).hash == \
        render_context(EnvironmentSpec.model_validate(spec)).hash
