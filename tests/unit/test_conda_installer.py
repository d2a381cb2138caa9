"""The conda installer script (kenv/conda_installer.py, `kenv-conda.py` in build contexts): parsing and pins.
It is run for real against a local channel in tests/unit/test_condachannel.py and in real build pods
(tests/integration/test_conda.py)."""

from __future__ import annotations

import re
from pathlib import Path

from kenv import conda_installer
from kenv.render import INSTALLER_REQUIREMENTS

ROOT = Path(__file__).resolve().parents[2]


def test_the_installer_image_bakes_in_the_pins_builds_install_from_pypi():
    dockerfile = (ROOT / "hack/images/conda-installer.Dockerfile").read_text()
    baked = set(re.findall(r"\b(?:py-rattler|PyYAML)==[0-9.]+", dockerfile))
    assert baked == set(INSTALLER_REQUIREMENTS)


def test_environment_file_splits_into_channels_conda_specs_and_the_pip_list(tmp_path):
    path = tmp_path / "environment.yml"
    path.write_text("channels: [https://conda.example.com/main, conda-forge]\n"
                    "dependencies:\n- python=3.11\n- numpy >=1.26\n- pip\n- pip:\n  - --index-url https://x/simple\n"
                    "  - rich==13.7.1\n")
    channels, specs, pip = conda_installer.read_environment(path)
    assert channels == ["https://conda.example.com/main", "conda-forge"]
    assert specs == ["python=3.11", "numpy >=1.26", "pip"]
    assert pip == ["--index-url https://x/simple", "rich==13.7.1"]


def test_a_long_solver_message_is_cut_to_its_first_lines():
    message = "\n".join(f"line {n}" for n in range(40))
    cut = conda_installer.first_lines(message).splitlines()
    assert cut[:2] == ["line 0", "line 1"] and cut[-1] == "…" and len(cut) == conda_installer.MESSAGE_LINES + 1


def test_an_environment_without_conda_dependencies_is_refused(tmp_path, capsys):
    path = tmp_path / "environment.yml"
    path.write_text("channels: [conda-forge]\ndependencies: []\n")
    assert conda_installer.main([str(path), str(tmp_path / "env")]) == 1
    assert "lists no conda dependencies" in capsys.readouterr().err
    assert not (tmp_path / "env").exists()


def test_channels_as_conda_reads_them():
    assert conda_installer.solve_channels(["defaults", "conda-forge"], ["numpy"]) == [
        "https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r", "conda-forge"]
    # a channel::package spec's channel joins the solve after the listed ones, once
    assert conda_installer.solve_channels(["conda-forge"], ["pytorch::pytorch", "pytorch::torchvision", "numpy"]) == [
        "conda-forge", "pytorch"]
