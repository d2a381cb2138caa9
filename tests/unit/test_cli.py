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


def test_import_azureml_prints_no_password_unless_asked(capsys):
    folder = str(ROOT / "tests/unit/fixtures/azureml/v1-private-registry")  # the SDK's save_to_directory output
    assert main(["import-azureml", folder]) == 0
    captured = capsys.readouterr()
    assert "not-a-real-password" not in captured.out + captured.err
    assert [d["kind"] for d in yaml.safe_load_all(captured.out)] == ["Environment"]
    assert ("kenv: warning: docker.baseImageRegistry: the password is not printed (--include-secret prints it as a "
            "Secret manifest); before applying, create Secret private-train-registry in the Environment's "
            "namespace: kubectl create secret docker-registry private-train-registry "
            "--docker-server=myacr.azurecr.io --docker-username=myacr --docker-password=<password>\n") in captured.err
    assert main(["import-azureml", folder, "--include-secret"]) == 0
    secret, _ = yaml.safe_load_all(capsys.readouterr().out)
    assert secret["kind"] == "Secret" and secret["stringData"]["password"] == "not-a-real-password"


def test_export_azureml_prints_every_loss_as_a_warning(tmp_path, capsys):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kenv.dev/v1alpha1", "kind": "Environment", "metadata": {
        "name": "e", "annotations": {"kenv.dev/azureml-tags": '{"team": "vision"}'}},
        "spec": {"docker": {"baseImage": "python:3.11"}}}))
    assert main(["export-azureml", "-f", str(path), "-o", str(tmp_path / "out"), "--format", "v1"]) == 0
    assert "kenv: warning: metadata.annotations[kenv.dev/azureml-tags]: Azure ML v1 environments have no tags" in \
        capsys.readouterr().err
