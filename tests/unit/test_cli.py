"""The `kenv` command's user tools, run in-process."""

from __future__ import annotations

from pathlib import Path

import yaml

from kenv.cli import main
from kenv.crd import render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def write_env(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment",
                                    "metadata": {"name": "e"}, "spec": spec}))
    return path


def test_render_writes_the_context_and_hash_matches(tmp_path, capsys):
    path = write_env(tmp_path, {"docker": {"baseImage": "python:3.11"}, "pip": {"packages": ["six==1.16.0"]}})
    assert main(["hash", "-f", str(path)]) == 0
    digest = capsys.readouterr().out.split()[1]
    assert main(["render", "-f", str(path), "-o", str(tmp_path / "ctx")]) == 0
    assert digest in capsys.readouterr().out
    assert (tmp_path / "ctx/requirements.txt").read_text() == "six==1.16.0\n"
    assert (tmp_path / "ctx/Dockerfile").read_text().splitlines()[1] == "FROM python:3.11"


def test_bad_spec_is_one_clear_line_naming_the_field(tmp_path, capsys):
    path = write_env(tmp_path, {"docker": {"baseImage": "python:3.11", "dockerfile": "FROM x"}})
    assert main(["render", "-f", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kenv: spec.docker") and "mutually exclusive" in error and error.count("\n") == 1


def test_crd_prints_both_generated_crds(capsys):
    assert main(["crd"]) == 0
    out = capsys.readouterr().out
    assert render_crd_yaml("Environment") in out and render_crd_yaml("ClusterEnvironment") in out


def test_import_azureml_prints_an_applicable_manifest(capsys):
    assert main(["import-azureml", str(ROOT / "examples/azureml/v1-sklearn")]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert documents[-1]["kind"] == "Environment" and documents[-1]["apiVersion"] == "kenv.dev/v1alpha1"
