"""Incremental builds, the pure parts: which edits qualify, the plan and Job, and kenv-delta.py's layer (run here
on a folder; tests/integration/test_incremental.py runs it in a real pod)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from kenv import builds, delta_script, incremental, jobstate
from kenv.config import OperatorSettings
from kenv.models import EnvironmentSpec, PipInstaller
from kenv.render import (
    CACHE_MOUNT,
    CONDA_PIP_FILE,
    CONDA_PREFIX,
    INSTALLER_REQUIREMENTS,
    LOCK_FALLBACK,
    LOCK_FILE,
    LOCK_SCRIPT,
    UV_FILE,
    Externals,
    render_context,
)
from kenv.versions import Snapshot

REPO = "registry.local:5000/kenv/envs"
SETTINGS = OperatorSettings(destination_repo=REPO, operator_image="registry.local:5000/kenv/operator:1",
                            package_cache_dir="/var/cache/kenv")
PARENT = f"{REPO}@sha256:" + "ab" * 32


def spec(*lines: str, **extra: object) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate({"build": {"incremental": True},
                                           "pip": {"requirements": "\n".join(lines) + "\n", **extra}})


def qualifies(old: EnvironmentSpec, new: EnvironmentSpec, parent: str = PARENT,
              parent_hash: str | None = None) -> incremental.Increment | str:
    previous = render_context(old)
    return incremental.increment(previous, render_context(new), parent_hash or previous.hash, parent, new, REPO)


def test_added_lines_qualify_and_are_named_in_their_order():
    found = qualifies(spec("six==1.16.0"), spec("idna==3.7", "six==1.16.0", "tomli==2.0.1"))
    assert found == incremental.Increment(PARENT, ("idna==3.7", "tomli==2.0.1"))
    assert found.parent_digest == "sha256:" + "ab" * 32


@pytest.mark.parametrize(("old", "new", "changed"), [
    (spec("six==1.16.0", "idna==3.6"), spec("six==1.17.0", "idna==3.6"), ("six==1.17.0",)),
    (spec("Six==1.16.0", "idna==3.6"), spec("idna==3.7", "six>=1.16,<2", "tomli==2.0.1"),
     ("idna==3.7", "six>=1.16,<2", "tomli==2.0.1")),
    # names compared as pip compares them
    (spec("Zope.Interface==6.0; python_version < '4'"), spec("zope-interface==6.4; python_version<'4'"),
     ("zope-interface==6.4; python_version<'4'",)),
    (spec("requests[socks]==2.32.3"), spec("requests[socks,use_chardet_on_py3]==2.32.2"),
     ("requests[socks,use_chardet_on_py3]==2.32.2",)),  # an extra more: pip installs what it needs
])
def test_a_changed_version_of_a_listed_package_qualifies_with_the_lines_added(old, new, changed):
    assert qualifies(old, new) == incremental.Increment(PARENT, changed)


@pytest.mark.parametrize(("old", "new", "why"), [
    (spec("six==1.16.0", "idna"), spec("six==1.16.0"), "removed (idna)"),
    (spec("six==1.16.0", "idna"), spec("six==1.17.0"), "removed (idna)"),
    (spec("idna==3.7"), spec("tomli==2.0.1"), "removed (idna==3.7)"),  # another package, not another version
    (spec("six==1.16.0"), spec("six==1.17.0", "six>=1.16"), "removed (six==1.16.0)"),  # which one replaces it?
    # a marker that may no longer apply: pip would skip the line and leave six installed
    (spec("six==1.16.0"), spec("six==1.17.0; python_version < '3'"), "removed (six==1.16.0)"),
    # a dropped extra: pip would leave its packages (PySocks) installed
    (spec("requests[socks]==2.32.3"), spec("requests==2.32.2"), "removed (requests[socks]==2.32.3)"),
    (spec("requests[socks]==2.32.3"), spec("requests[security]==2.32.3"), "removed (requests[socks]==2.32.3)"),
    (spec("six @ https://files.example/six-1.16.0-py2.py3-none-any.whl"),
     spec("six @ https://files.example/six-1.17.0-py2.py3-none-any.whl"), "removed (six @ https://"),
    (spec("six==1.16.0"), spec("six==1.16.0"), "no requirement line or conda dependency was added or changed"),
    (spec("six==1.16.0"), spec("six==1.16.0", "--pre"), "pip option"),
    (spec("six==1.16.0"), spec("six==1.16.0", "idna", index_url="https://pypi.example/simple"), "pip option"),
    # another installer is another Dockerfile
    (spec("six==1.16.0"), spec("six==1.16.0", "idna", installer="uv"), "more than the pip requirements"),
    (spec("six==1.16.0"), EnvironmentSpec.model_validate({
        "build": {"incremental": True}, "docker": {"baseImage": "python:3.12-slim"},
        "pip": {"requirements": "six==1.16.0\nidna\n"}}), "more than the pip requirements"),
])
def test_any_other_edit_needs_a_full_build(old, new, why):
    found = qualifies(old, new)
    assert isinstance(found, str) and why in found


def dockerfile_spec(dockerfile: str, *lines: str) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate({"build": {"incremental": True},
                                           "docker": {"dockerfile": dockerfile},
                                           "pip": {"requirements": "\n".join(lines) + "\n"}})


@pytest.mark.parametrize(("dockerfile", "step"), [
    ("FROM python:3.11-slim\nARG PIP_INDEX_URL=https://mirror.example/simple\n", "ARG PIP_INDEX_URL"),
    ("FROM python:3.11-slim\nSHELL [\"/bin/bash\", \"-c\"]\n", "SHELL"),
    ("FROM python:3.11-slim AS base\nARG X\nFROM base\nshell [\"/bin/sh\", \"-ec\"]\n", "SHELL"),
    # a heredoc's line that reads like FROM starts no stage
    ("FROM python:3.11-slim\nARG PIP_INDEX_URL=https://private/simple\nRUN python3 <<EOF\nfrom pathlib import Path\n"
     "EOF\n", "ARG PIP_INDEX_URL"),
    ("FROM python:3.11-slim\nARG PIP_CERT=/etc/ca.crt PIP_EXTRA_INDEX_URL=https://x/simple\n",
     "ARG PIP_EXTRA_INDEX_URL"),  # every name an ARG declares
])
def test_a_dockerfile_whose_arg_or_shell_a_run_step_sees_needs_a_full_build(dockerfile, step):
    found = qualifies(dockerfile_spec(dockerfile, "six"), dockerfile_spec(dockerfile, "six", "idna"))
    assert found == f"the Dockerfile's {step} would change how pip runs, and only a full build runs it"


@pytest.mark.parametrize("dockerfile", [
    "ARG TAG=3.11\nFROM python:${TAG}-slim\n",  # before FROM: the base's name only
    "FROM python:3.11-slim AS build\nARG TOKEN\nFROM python:3.11-slim\nRUN echo \\\n  ARG is text here\n",
    "FROM python:3.11-slim\nRUN <<EOF\nARG inside a heredoc\nEOF\n",
])
def test_args_a_run_step_of_the_final_stage_cannot_see_do_not_matter(dockerfile):
    found = qualifies(dockerfile_spec(dockerfile, "six"), dockerfile_spec(dockerfile, "six", "idna"))
    assert isinstance(found, incremental.Increment), found


def test_a_parent_built_from_other_content_or_elsewhere_needs_a_full_build():
    old, new = spec("six==1.16.0"), spec("six==1.16.0", "idna")
    assert "no longer renders" in qualifies(old, new, parent_hash="0" * 64)  # e.g. a dockerfileFrom ConfigMap moved
    assert "destination repository" in qualifies(old, new, parent="other.registry/kenv/envs@sha256:" + "ab" * 32)
    assert "destination repository" in qualifies(old, new, parent=f"{REPO}:kenv-tag")


def test_the_plan_keeps_the_full_tag_for_full_builds_and_names_the_parent():
    context = render_context(spec("six==1.16.0", "idna"))
    full = builds.plan_build(context, SETTINGS)
    found = incremental.Increment(PARENT, ("idna",))
    plan = incremental.plan_increment(full, found)
    assert plan.destination == f"{full.destination}-on-{'ab' * 6}" and plan.hash == full.hash
    assert plan.job_name.startswith(full.job_name) and plan.job_name != full.job_name
    other = incremental.plan_increment(full, incremental.Increment(f"{REPO}@sha256:" + "cd" * 32, ("idna",)))
    assert other.job_name != plan.job_name and other.destination != plan.destination
    retry = incremental.plan_increment(builds.plan_build(context, SETTINGS, "retry:3"), found)
    assert retry.job_name != plan.job_name  # a retry gets a Job of its own, as a full build's does
    for name in (plan.job_name, plan.context_config_map, plan.docker_config_secret):
        assert len(name) <= 63 - 11  # a pod name adds -xxxxx to the Job's


def job(has_docker_config: bool = True, package_cache: bool = True) -> dict:
    new = spec("six==1.16.0", "idna")
    context = render_context(new)
    plan = incremental.plan_increment(builds.plan_build(context, SETTINGS), incremental.Increment(PARENT, ("idna",)))
    files = incremental.context_files(context)
    return incremental.increment_job(plan, incremental.Increment(PARENT, ("idna",)), new, SETTINGS,
                                     requested_by="Environment/ns/inc", context_files=list(files),
                                     has_docker_config=has_docker_config, has_ca=False, package_cache=package_cache)


def test_the_job_installs_in_the_parent_image_and_pushes_with_the_operators():
    body = job()
    pod = body["spec"]["template"]["spec"]
    [install], [push] = pod["initContainers"], pod["containers"]
    assert install["image"] == PARENT
    assert install["command"][:2] == ["python3", f"{builds.CONTEXT_DIR}/{incremental.DELTA_SCRIPT}"]
    assert install["command"][-3:] == ["--", LOCK_FILE, LOCK_FALLBACK]
    assert f"--lock-script={builds.CONTEXT_DIR}/{LOCK_SCRIPT}" in install["command"]
    assert f"--requirements={builds.CONTEXT_DIR}/requirements.txt" in install["command"]
    assert not any(argument.startswith("--conda") for argument in install["command"])
    assert install["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert push["image"] == SETTINGS.operator_image and push["command"] == ["kenv", "append-layers"]
    assert f"--base={PARENT}" in push["args"] and any(a.endswith("-on-" + "ab" * 6) for a in push["args"])
    assert push["securityContext"]["runAsNonRoot"] and push["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["layers"] == {"name": "layers", "emptyDir": {}}
    assert {"name": "scratch", "mountPath": "/tmp"} in push["volumeMounts"]  # the gzipped layers go there
    assert {"name": "layers", "mountPath": incremental.OUT_DIR, "readOnly": True} in push["volumeMounts"]
    assert volumes["package-cache"]["hostPath"]["path"] == "/var/cache/kenv"
    assert pod["imagePullSecrets"] == [{"name": body["metadata"]["name"] + "-docker"}]
    assert body["metadata"]["labels"][builds.LABEL_ROLE] == "build"  # counted and watched as every build
    assert body["metadata"]["annotations"]["kenv.dev/builder"] == "incremental"
    bare = job(has_docker_config=False, package_cache=False)["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in bare and "package-cache" not in {v["name"] for v in bare["volumes"]}
    assert "--pip-cache=--no-cache-dir" in bare["initContainers"][0]["command"]


def test_a_uv_edit_installs_with_uv_as_the_dockerfile_does():
    old, new = spec("six==1.16.0", installer="uv"), spec("six==1.16.0", "idna==3.7", installer="uv")
    found = qualifies(old, new)
    assert found == incremental.Increment(PARENT, ("idna==3.7",), installer=PipInstaller.UV)
    assert found.summary == "uv pip install idna==3.7"
    context = render_context(new)
    assert UV_FILE in context.files  # the pin the full build installs uv from, which the install container uses
    plan = incremental.plan_increment(builds.plan_build(context, SETTINGS), found)
    for package_cache, uv_cache in ((True, f"--cache-dir={CACHE_MOUNT}/uv"), (False, "--no-cache")):
        body = incremental.increment_job(plan, found, new, SETTINGS, requested_by="x",
                                         context_files=list(incremental.context_files(context)),
                                         has_docker_config=False, has_ca=False, package_cache=package_cache)
        command = body["spec"]["template"]["spec"]["initContainers"][0]["command"]
        context_dir = builds.CONTEXT_DIR
        assert f"--uv-requirements={context_dir}/requirements.txt" in command
        assert not any(argument.startswith("--requirements=") for argument in command)
        assert f"--uv-pin={context_dir}/{UV_FILE}" in command and f"--uv-cache={uv_cache}" in command
        args = delta_script.arguments(command[2:])
        assert args.installs == [("uv", f"{context_dir}/requirements.txt")] and args.uv_cache == uv_cache


def test_with_conda_uv_installs_spec_pip_and_pip_the_environment_files_list():
    found = incremental.Increment(PARENT, ("idna",), ("six",), (CONDA_PIP_FILE, "requirements.txt"),
                                  installer=PipInstaller.UV)
    new = conda_spec(["python=3.11", "six"], pip=["attrs"])
    install = incremental.install_container(found, new, SETTINGS, {}, False, None)
    args = delta_script.arguments(install["command"][2:])
    assert args.installs == [("pip", f"{builds.CONTEXT_DIR}/{CONDA_PIP_FILE}"),
                             ("uv", f"{builds.CONTEXT_DIR}/requirements.txt")]


def test_the_delta_scripts_uv_step_is_the_dockerfiles(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    args = delta_script.arguments(["--out=/o", "--lock-script=l", "--pip-cache=--no-cache-dir",
                                   f"--uv-cache=--cache-dir={cache}/uv", "--uv-requirements=r.txt",
                                   "--uv-pin=uv.txt"])
    uv = delta_script.install_command("uv", "r.txt", args, "/tmp/kenv-uv-x/bin/uv")
    assert uv[:4] == ["/tmp/kenv-uv-x/bin/uv", "pip", "install", f"--cache-dir={cache}/uv"]
    assert uv[4:] == ["--system", "--python", delta_script.sys.executable, "--break-system-packages",
                      "--index-strategy", "unsafe-best-match", "--compile-bytecode", "-r", "r.txt"]
    # the image's user cannot write the cache volume: uv goes without, as in the Dockerfile
    monkeypatch.setattr(delta_script.os, "access", lambda path, mode: path != str(cache))
    assert delta_script.install_command("uv", "r.txt", args, "uv")[3] == "--no-cache"
    with pytest.raises(SystemExit):  # uv to install with, but nothing to install uv from
        delta_script.arguments(["--out=/o", "--lock-script=l", "--pip-cache=--no-cache-dir", "--uv-requirements=r"])
    pip = delta_script.install_command("pip", "r.txt", args, None)
    assert pip == [delta_script.sys.executable, "-m", "pip", "install", "--no-cache-dir",
                   "--disable-pip-version-check", "-r", "r.txt"]


def conda_spec(packages: list[str], pip: list[str] | None = None, channels: list[str] | None = None,
               requirements: str | None = "six==1.16.0\n") -> EnvironmentSpec:
    conda: dict = {"channels": channels or ["https://conda.example/main", "nodefaults"], "packages": packages}
    if pip:
        conda["pipPackages"] = pip
    return EnvironmentSpec.model_validate({"build": {"incremental": True}, "conda": conda,
                                           **({"pip": {"requirements": requirements}} if requirements else {})})


def test_a_conda_edit_qualifies_added_changed_and_dropped_dependencies_alike():
    old = conda_spec(["python=3.11", "requests", "attrs=23"])
    found = qualifies(old, conda_spec(["python=3.11", "requests", "attrs=24", "kenv-pyhello"]))
    assert found == incremental.Increment(PARENT, (), ("attrs=24", "kenv-pyhello", "-attrs=23"), ("requirements.txt",))
    assert found.summary == "conda attrs=24 kenv-pyhello -attrs=23"
    both = qualifies(old, conda_spec(["python=3.11", "requests", "attrs=23", "six"],
                                     requirements="six==1.16.0\nidna\n"))
    assert both == incremental.Increment(PARENT, ("idna",), ("six",), ("requirements.txt",))
    assert both.summary == "conda six; pip install idna"
    conda_only = qualifies(conda_spec(["python", "six"], requirements=None),
                           conda_spec(["python", "six", "attrs"], requirements=None))
    assert isinstance(conda_only, incremental.Increment) and conda_only.conda == ("attrs",)
    assert conda_only.requirements == ()  # no pip step to run again
    # the environment file's pip list runs again after a conda change, not after a spec.pip one
    with_list = conda_spec(["python=3.11", "six"], pip=["idna"])
    assert qualifies(with_list, conda_spec(["python=3.11", "six", "attrs"], pip=["idna"])).requirements == (
        CONDA_PIP_FILE, "requirements.txt")
    assert qualifies(with_list, conda_spec(["python=3.11", "six"], pip=["idna"], requirements="six==1.16.0\nx\n")
                     ).requirements == ("requirements.txt",)


@pytest.mark.parametrize(("old", "new", "why"), [
    (conda_spec(["python=3.11", "six"]), conda_spec(["python=3.11", "six"], channels=["https://conda.example/other"]),
     "channels changed"),
    (conda_spec(["python=3.11", "six"], pip=["idna"]), conda_spec(["python=3.11", "six"], pip=["idna", "tomli"]),
     "pip list changed"),
    (conda_spec(["r-base"]), conda_spec(["r-base", "r-ggplot2"]), "name no python"),
    # the update runs on the installed python: a new one is a full build (and py-rattler may not run on the old)
    (conda_spec(["python=3.9", "six"]), conda_spec(["python=3.11", "six", "attrs"]), "python changed"),
    (conda_spec(["python=3.11", "six"]), conda_spec(["python=3.12", "six"]), "python changed"),
    (conda_spec(["python=3.9", "six"]), conda_spec(["python=3.9", "six", "attrs"]), "older than py-rattler"),
    (spec("six==1.16.0"), conda_spec(["python=3.11"]), "conda environment was added"),
])
def test_other_conda_edits_need_a_full_build(old, new, why):
    found = qualifies(old, new)
    assert isinstance(found, str) and why in found


def test_a_conda_edit_with_channel_credentials_builds_in_full():
    def private(packages: list[str]) -> EnvironmentSpec:
        return EnvironmentSpec.model_validate({"build": {"incremental": True}, "conda": {
            "channels": ["https://conda.example/private"], "packages": packages,
            "channelCredentials": [{"host": "conda.example", "secretName": "conda-token"}]}})
    found = qualifies(private(["python=3.11", "six"]), private(["python=3.11", "six", "attrs"]))
    assert isinstance(found, str) and "channelCredentials" in found


def test_the_micromamba_installer_builds_conda_edits_in_full():
    externals = Externals(conda_installer="micromamba")
    old, new = conda_spec(["python=3.11", "six"]), conda_spec(["python=3.11", "six", "attrs"])
    previous = render_context(old, externals)
    found = incremental.increment(previous, render_context(new, externals), previous.hash, PARENT, new, REPO)
    assert isinstance(found, str) and "rattler installer only" in found


@pytest.mark.parametrize(("python", "version"), [
    ("python", ()), ("python>=3.10", (3, 10)), ("conda-forge::python 3.12.*", (3, 12)), ("python=3.11=h123_0", (3, 11)),
    ("python<3.10", ()), ("python >=3.8,<3.10", ()), ("python 3.9|3.12", ()),  # not pinned from below: not known
])
def test_the_python_a_conda_environment_asks_for(python, version):
    assert incremental.conda_python(["six", python]) == version
    assert incremental.conda_python(["pythonnet", "ipython", "python-dateutil"]) is None


def test_a_conda_increment_copies_rattler_in_and_updates_the_prefix_before_the_pip_steps():
    new = conda_spec(["python=3.11", "six", "attrs"], pip=["idna"])
    found = qualifies(conda_spec(["python=3.11", "six"], pip=["idna"]), new)
    assert isinstance(found, incremental.Increment) and found.conda == ("attrs",)
    context = render_context(new)
    plan = incremental.plan_increment(builds.plan_build(context, SETTINGS), found)
    body = incremental.increment_job(plan, found, new, SETTINGS, requested_by="x",
                                     context_files=list(incremental.context_files(context)),
                                     has_docker_config=False, has_ca=True, package_cache=True)
    pod = body["spec"]["template"]["spec"]
    tools, install = pod["initContainers"]
    assert tools["image"] == SETTINGS.conda_installer_image and tools["command"][:2] == ["python3", "-c"]
    assert tools["command"][3:] == [incremental.TOOLS_DIR, f"--cache-dir={CACHE_MOUNT}/pip",
                                    *INSTALLER_REQUIREMENTS]
    assert {"name": "tools", "emptyDir": {}} in pod["volumes"]
    assert {"name": "tools", "mountPath": incremental.TOOLS_DIR, "readOnly": True} in install["volumeMounts"]
    command = install["command"]
    assert command[0] == f"{CONDA_PREFIX}/bin/python" and command[-4:] == ["--", LOCK_FILE, LOCK_FALLBACK,
                                                                          CONDA_PREFIX]
    context_dir = builds.CONTEXT_DIR
    assert f"--conda-environment={context_dir}/environment.yml" in command
    assert f"--conda-option=--cache-dir={CACHE_MOUNT}/rattler" in command
    assert f"--conda-option=--glibc={SETTINGS.conda_glibc}" in command
    # the environment file's pip list, then spec.pip, as the Dockerfile installs them
    assert [a for a in command if a.startswith("--requirements=")] == [
        f"--requirements={context_dir}/{CONDA_PIP_FILE}", f"--requirements={context_dir}/requirements.txt"]
    push = pod["containers"][0]
    assert "--created-by=kenv incremental: conda attrs" in push["args"]


def test_the_operators_pull_secrets_pull_the_push_container():
    settings = OperatorSettings(destination_repo=REPO, operator_image="private.example/kenv/operator:1",
                                operator_image_pull_secrets=" pull-a, pull-b ")
    new = spec("six==1.16.0", "idna")
    plan = incremental.plan_increment(builds.plan_build(render_context(new), settings),
                                      incremental.Increment(PARENT, ("idna",)))
    for has_docker_config, expected in ((True, [plan.docker_config_secret, "pull-a", "pull-b"]),
                                        (False, ["pull-a", "pull-b"])):
        body = incremental.increment_job(plan, incremental.Increment(PARENT, ("idna",)), new, settings,
                                         requested_by="x", context_files=[], has_docker_config=has_docker_config,
                                         has_ca=False, package_cache=False)
        assert body["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": name} for name in expected]


def test_a_pull_secret_that_is_no_secret_name_stops_the_operator_naming_it():
    with pytest.raises(ValueError, match="'Pull_A' is not a Secret name"):
        OperatorSettings(destination_repo=REPO, operator_image_pull_secrets="ok,Pull_A")


def test_the_job_needs_the_operators_image():
    with pytest.raises(ValueError, match="KENV_OPERATOR_IMAGE"):
        incremental.increment_job(
            builds.plan_build(render_context(spec("six")), SETTINGS), incremental.Increment(PARENT, ("six",)),
            spec("six"), OperatorSettings(destination_repo=REPO), requested_by="x", context_files=[],
            has_docker_config=False, has_ca=False, package_cache=False)


def test_the_delta_layer_holds_what_changed_and_a_whiteout_per_removed_tree(tmp_path: Path):
    root = tmp_path / "prefix"
    (root / "site" / "old" / "sub").mkdir(parents=True)
    (root / "site" / "old" / "sub" / "a.py").write_text("a")
    (root / "site" / "kept.py").write_text("kept")
    (root / "site" / "edited.py").write_text("v1")
    (root / "bin").mkdir()
    (root / "bin" / "gone").write_text("x")
    before = delta_script.snapshot([str(root)], [], set())
    (root / "site" / "new").mkdir()
    (root / "site" / "new" / "b.py").write_text("b")
    os.symlink("new/b.py", root / "site" / "link")
    (root / "site" / "edited.py").write_text("v2, longer")
    for path in (root / "site" / "old" / "sub" / "a.py", root / "bin" / "gone"):
        path.unlink()
    (root / "site" / "old" / "sub").rmdir()
    (root / "site" / "old").rmdir()
    changed, removed = delta_script.changes(before, delta_script.snapshot([str(root)], [], set()))
    relative = {os.path.relpath(p, root) for p in changed}
    assert {"site/new", "site/new/b.py", "site/link", "site/edited.py"} <= relative
    assert "site/kept.py" not in relative
    assert [os.path.relpath(p, root) for p in removed] == ["bin/gone", "site/old"]  # not site/old/sub
    layer = tmp_path / "layer.tar"
    delta_script.write_layer(str(layer), changed, removed)
    with tarfile.open(layer) as tar:
        members = {m.name: m for m in tar.getmembers()}
    prefix = str(root).lstrip("/")
    assert members[f"{prefix}/site/link"].issym() and members[f"{prefix}/site/link"].linkname == "new/b.py"
    assert members[f"{prefix}/site/new"].isdir()
    assert f"{prefix}/bin/.wh.gone" in members and f"{prefix}/site/.wh.old" in members
    assert not any(".wh.sub" in name or name.endswith("kept.py") for name in members)


def test_the_roots_walked_are_the_interpreters_install_paths_and_pips_target_without_nesting(monkeypatch):
    monkeypatch.setattr(delta_script.sysconfig, "get_paths", lambda: {
        "stdlib": "/usr/lib/python3.11", "purelib": "/usr/local/lib/python3.11/site-packages",
        "scripts": "/usr/local/bin", "data": "/usr/local"})
    monkeypatch.setattr(delta_script.site, "getuserbase", lambda: "/home/user/.local")
    monkeypatch.setattr(delta_script.site, "getusersitepackages", lambda: "/home/user/.local/lib/site-packages")
    monkeypatch.setenv("PIP_TARGET", "/opt/packages")
    monkeypatch.delenv("PIP_PREFIX", raising=False)
    assert delta_script.install_roots() == ["/home/user/.local", "/opt/packages", "/usr/lib/python3.11",
                                            "/usr/local"]


def test_no_whiteout_under_a_removed_folder_or_a_folder_that_became_a_file(tmp_path: Path):
    site = tmp_path / "site"
    (site / "foo").mkdir(parents=True)
    (site / "foo" / "a.py").write_text("a")
    (site / "foo-1.0.dist-info").mkdir()  # sorts between "foo" and "foo/": the tree's end must not be lost
    (site / "foo-1.0.dist-info" / "RECORD").write_text("r")
    (site / "bar").mkdir()
    (site / "bar" / "b.py").write_text("b")
    before = delta_script.snapshot([str(site)], [], set())
    for tree in ("foo", "foo-1.0.dist-info"):
        for child in (site / tree).iterdir():
            child.unlink()
        (site / tree).rmdir()
    (site / "bar" / "b.py").unlink()
    (site / "bar").rmdir()
    (site / "bar").write_text("now a file")
    changed, removed = delta_script.changes(before, delta_script.snapshot([str(site)], [], set()))
    assert [os.path.relpath(p, site) for p in removed] == ["foo", "foo-1.0.dist-info"]
    assert [os.path.relpath(p, site) for p in changed] == [".", "bar"]  # the folder's own time, and the file


def test_a_mount_where_pip_installs_is_found_and_kenvs_own_are_not():
    mountinfo = "\n".join([
        "22 1 0:21 / / rw,relatime - overlay overlay rw",
        "30 22 0:30 / /kenv/out rw - tmpfs tmpfs rw",
        "31 22 8:1 /volumes/x /usr/local/lib/python3.11/site-packages/my\\040data rw - ext4 /dev/sda1 rw",
        "32 22 8:1 /home /home/user/.local rw - ext4 /dev/sda1 rw",
        "33 22 0:31 / /usr/local2 rw - tmpfs tmpfs rw",
    ])
    roots = ["/home/user/.local", "/usr/local"]
    assert delta_script.mounts_under(roots, {"/kenv/out"}, mountinfo) == [
        "/home/user/.local", "/usr/local/lib/python3.11/site-packages/my data"]
    assert delta_script.mounts_under(["/usr/lib/python3"], {"/kenv/out"}, mountinfo) == []


def test_files_outside_the_roots_are_recorded_alone_and_other_filesystems_are_not_walked(tmp_path: Path):
    lock = tmp_path / "etc" / "lock.json"
    lock.parent.mkdir()
    lock.write_text("{}")
    (tmp_path / "etc" / "other").write_text("x")
    found = delta_script.snapshot([], [str(lock), str(tmp_path / "missing")], set())
    assert list(found) == [str(lock)]
    if os.stat("/dev/pts").st_dev == os.stat("/dev").st_dev:
        pytest.skip("/dev/pts is not a filesystem of its own here")
    walked = delta_script.snapshot(["/dev"], [], set())
    assert "/dev/null" in walked and not any(path.startswith("/dev/pts") for path in walked)


def test_a_failed_install_container_is_what_the_failure_message_names():
    pod = {"metadata": {"name": "build-pod"}, "status": {
        "initContainerStatuses": [{"name": "install", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        "containerStatuses": [{"name": "build", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    job = {"metadata": {"name": "job"}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "limit"}]}}
    message = jobstate.failure_message(job, [pod], "ERROR: No matching distribution found for x\n")
    assert "pod build-pod exited with code 1 (Error)" in message and "No matching distribution" in message
    assert jobstate.digest_from_pods([pod]) is None
    done = {"name": "install", "state": {"terminated": {"exitCode": 0}}}
    pushed = {"exitCode": 0, "message": "sha256:" + "e" * 64}
    pod["status"] = {"initContainerStatuses": [done], "containerStatuses": [{"state": {"terminated": pushed}}]}
    assert jobstate.digest_from_pods([pod]) == "sha256:" + "e" * 64  # a finished install step is passed over


def test_the_chain_depth_counts_incremental_versions_back_to_the_last_full_build():
    def kept(*reasons: str, first: int = 1) -> list[Snapshot]:
        return [Snapshot(number=first + index, image=f"img{index}", reason=reason)
                for index, reason in enumerate(reasons)]
    chain = kept("BuildSucceeded", "IncrementalBuild", "DefinitionChanged", "IncrementalBuild", "IncrementalBuild")
    assert incremental.chain_depth(chain, 5) == 3
    assert incremental.chain_depth(chain, 3) == 1  # from the version asked about, not the newest
    assert incremental.chain_depth(chain, 1) == 0
    rebuilt = kept("IncrementalBuild", "Rebuilt", "IncrementalBuild", "ImageFound", "IncrementalBuild")
    assert incremental.chain_depth(rebuilt, 5) == 1  # any build but an incremental one ends the chain
    found = kept("BuildSucceeded", "IncrementalImageFound", "IncrementalBuild")
    assert incremental.chain_depth(found, 3) == 2  # an increment another Environment built is a link too
    pruned = kept("IncrementalBuild", "IncrementalBuild", first=7)  # versions 1-6 deleted by retention
    assert incremental.chain_depth(pruned, 8) == incremental.MAX_CHAIN  # how deep is unknown: flattened
    after_full = kept("BuildSucceeded", "IncrementalBuild", first=7)
    assert incremental.chain_depth(after_full, 8) == 1  # the full build is kept: the chain is known
    assert incremental.chain_depth([], 4) == incremental.MAX_CHAIN  # nothing kept: unknown


def test_after_a_conda_update_uv_leaves_no_module_uncompiled():
    """uv compiles all of site-packages only when it installs something; after a conda update the delta script
    compiles it, as the full build's uv step does over its conda stage's packages."""
    base = ["--out=/o", "--lock-script=l", "--pip-cache=--no-cache-dir"]
    conda = ["--conda-environment=e.yml", "--conda-prefix=/env", "--conda-installer=c.py", "--conda-tools=/t"]
    uv = ["--uv-requirements=r.txt", "--uv-pin=uv.txt"]
    assert delta_script.compiles_site_packages(delta_script.arguments(base + conda + uv))
    assert not delta_script.compiles_site_packages(delta_script.arguments(base + conda + ["--requirements=r.txt"]))
    assert not delta_script.compiles_site_packages(delta_script.arguments(base + uv))  # pip and uv compile theirs
