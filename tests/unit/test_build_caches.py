"""Package caches and the uv installer: rendered Dockerfile, build Job, validation (pure code, no cluster)."""

from __future__ import annotations

import shlex

import pytest
from pydantic import ValidationError

from kenv import builds, buildwatch, conda_installer
from kenv.config import OperatorSettings
from kenv.errors import describe_validation_error
from kenv.models import Builder, BuildSettings, spec_from_body
from kenv.refs import EnvironmentRef
from kenv.render import CACHE_ARGS, CACHE_MOUNT, UV_FILE, UV_REQUIREMENT, cache_build_args, render_context

PIP = {"docker": {"baseImage": "python:3.12-slim"}, "pip": {"packages": ["six==1.16.0"]}}
CONDA_PIP = {"conda": {"packages": ["numpy"]}, "pip": {"packages": ["six"]}}
SETTINGS = OperatorSettings(destination_repo="registry.local:5000/kenv/envs")
CACHED = SETTINGS.model_copy(update={"package_cache_dir": "/var/cache/kenv"})


def job_for(body: dict, settings: OperatorSettings, builder: Builder = Builder.KANIKO,
            cache: bool = True) -> dict:
    context = render_context(spec_from_body(body))
    plan = builds.plan_build(context, settings)
    return builds.build_job(plan, BuildSettings(builder=builder, cache=cache), settings, requested_by="ns/e",
                            context_files=list(context.files), has_docker_config=False, has_ca=False,
                            package_cache=True)


def container(job: dict) -> dict:
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def run_lines(body: dict) -> list[str]:
    return [line for line in render_context(spec_from_body(body)).files["Dockerfile"].splitlines()
            if line.startswith("RUN ")]


def test_every_installer_keeps_no_cache_in_the_image_unless_the_operator_passes_one():
    dockerfile = render_context(spec_from_body(CONDA_PIP)).files["Dockerfile"]
    for name in ("KENV_PIP_CACHE", "KENV_CONDA_CACHE"):
        assert f"ARG {name}={CACHE_ARGS[name][0]}\n" in dockerfile
    installs = [line for line in run_lines(CONDA_PIP) if " install " in line or "kenv-conda.py" in line]
    assert installs and all("$KENV_PIP_CACHE" in line or "$KENV_CONDA_CACHE" in line for line in installs)
    assert "--no-cache-dir" not in "\n".join(run_lines(CONDA_PIP))  # only as the ARG's default


def test_a_cache_changes_build_args_never_the_context_or_its_hash():
    context = render_context(spec_from_body(PIP))
    plain, cached = container(job_for(PIP, SETTINGS)), container(job_for(PIP, CACHED))
    assert [a for a in cached["args"] if a.startswith("--build-arg=")] == [
        f"--build-arg={name}={value}" for name, value in cache_build_args(CACHE_MOUNT).items()]
    assert not [a for a in plain["args"] if a.startswith("--build-arg=")]
    # Same ConfigMap content, so the same hash and tag, with or without the cache.
    assert job_for(PIP, CACHED)["metadata"]["annotations"][builds.ANNOTATION_HASH] == context.hash
    assert job_for(PIP, SETTINGS)["metadata"]["annotations"][builds.ANNOTATION_HASH] == context.hash


def test_the_cache_volume_is_the_configured_host_directory_at_a_path_kaniko_never_snapshots():
    pod = job_for(PIP, CACHED)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "package-cache")
    assert volume["hostPath"] == {"path": "/var/cache/kenv", "type": "DirectoryOrCreate"}
    mount = next(m for m in container(job_for(PIP, CACHED))["volumeMounts"] if m["name"] == "package-cache")
    assert mount["mountPath"] == CACHE_MOUNT and not mount.get("readOnly")
    assert CACHE_MOUNT.startswith("/kaniko/")  # Kaniko's own folder: ignored even unmounted


@pytest.mark.parametrize(("builder", "cache"), [(Builder.BUILDAH, True), (Builder.BUILDKIT, True),
                                                (Builder.KANIKO, False)])
def test_no_cache_volume_for_builders_that_cannot_use_it_or_a_build_that_asks_for_none(builder, cache):
    job = job_for(PIP, CACHED, builder, cache)
    assert "package-cache" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    assert not [a for a in container(job).get("args") or [] if a.startswith("--build-arg=")]


def test_uv_installs_the_requirements_and_leaves_no_uv_in_the_image():
    body = {**PIP, "pip": {**PIP["pip"], "installer": "uv", "indexUrl": "https://pypi.example.com/simple",
                           "requirements": "--find-links https://wheels.example.com/\n"
                                           "--extra-index-url=https://extra.example.com/simple --only-binary :all:\n"
                                           "rich==13.7.1\n"}}
    context = render_context(spec_from_body(body))
    # uv comes from where the requirements say packages come from (and only that: not --only-binary)
    assert context.files[UV_FILE] == ("--index-url https://pypi.example.com/simple\n"
                                      "--find-links https://wheels.example.com/\n"
                                      f"--extra-index-url https://extra.example.com/simple\n{UV_REQUIREMENT}\n")
    [install] = [line for line in run_lines(body) if "uv pip install" in line]
    words = shlex.split(install)
    assert words[words.index("--target") + 1] == "/tmp/kenv-uv"
    assert install.endswith("&& rm -rf /tmp/kenv-uv")
    for flag in ("--compile-bytecode", "--break-system-packages", "$cache"):
        assert flag in install.split()
    # the cache the operator passes, unless this step's USER cannot write it
    assert f'cache="$KENV_UV_CACHE" && {{ [ -w {CACHE_MOUNT} ] || cache=--no-cache; }}' in install
    assert words[words.index("--index-strategy") + 1] == "unsafe-best-match"  # pip's choice across indexes
    assert [line for line in run_lines(body) if "/tmp/kenv/requirements.txt" in line] == [install]  # not pip


def test_pip_stays_the_default_and_uv_is_part_of_the_content():
    pip = render_context(spec_from_body(PIP))
    uv = render_context(spec_from_body({**PIP, "pip": {**PIP["pip"], "installer": "uv"}}))
    assert UV_FILE not in pip.files and "uv pip install" not in pip.files["Dockerfile"]
    assert pip.hash != uv.hash


@pytest.mark.parametrize("option", ["--pre", "--prefer-binary", "--trusted-host pypi.example.com",
                                    "--trusted-host=pypi.example.com"])
def test_uv_refuses_options_it_would_ignore_naming_the_line_and_the_fix(option):
    body = {"pip": {"installer": "uv", "requirements": f"six\n{option}\n"}}
    with pytest.raises(ValidationError) as error:
        spec_from_body(body)
    message = describe_validation_error(error.value)
    assert "spec.pip.requirements line 2" in message and "set spec.pip.installer to pip" in message
    spec_from_body({"pip": {"requirements": f"six\n{option}\n"}})  # pip reads them


@pytest.mark.parametrize("pip", [
    {"indexUrl": "https://a.example.com/simple", "requirements": "-i https://b.example.com/simple\nsix\n"},
    {"requirements": "--index-url https://a.example.com/simple\n--index-url=https://b.example.com/simple\nsix\n"},
])
def test_uv_refuses_two_index_urls_where_pip_would_take_the_last(pip):
    with pytest.raises(ValidationError) as error:
        spec_from_body({"pip": {**pip, "installer": "uv"}})
    assert "uv takes one --index-url" in describe_validation_error(error.value)
    spec_from_body({"pip": pip})
    spec_from_body({"pip": {"installer": "uv", "indexUrl": "https://a.example.com/simple",
                            "requirements": "--extra-index-url https://b.example.com/simple\nsix\n"}})


def test_the_conda_installer_keeps_its_cache_only_where_told():
    parser_args = ["env.yml", "/opt/env", "--cache-dir", "/kaniko/kenv-cache/rattler", "--no-cache"]
    with pytest.raises(SystemExit):
        conda_installer.main(parser_args)  # one or the other


@pytest.mark.parametrize(("files", "conda_credentials", "shared"), [
    ({"requirements.txt": "six\n"}, False, True),
    ({"requirements.txt": "pkg @ https://files.example.com/pkg-1.0.tar.gz\n"}, False, True),  # `@`, no userinfo
    ({"requirements.txt": "--index-url https://me:token@pypi.example.com/simple\nsix\n"}, False, False),
    ({"environment.yml": "channels: [https://me:token@conda.example.com/team]\n"}, False, False),
    ({"environment.yml": "channels: [conda-forge]\n"}, True, False),
])
def test_builds_that_fetch_with_credentials_keep_their_packages_out_of_the_shared_cache(files, conda_credentials,
                                                                                        shared):
    assert builds.may_share_package_cache(files, conda_credentials) is shared
    context = render_context(spec_from_body(PIP))
    plan = builds.plan_build(context, CACHED)
    job = builds.build_job(plan, BuildSettings(), CACHED, requested_by="ns/e", context_files=list(context.files),
                           has_docker_config=False, has_ca=False, package_cache=shared)
    assert ("package-cache" in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}) is shared


def test_a_finished_build_nudges_exactly_the_environments_whose_status_names_its_job():
    def entry(job: str | None) -> dict:
        return {"status": {"buildJob": {"namespace": "kenv-system", "name": job}} if job else {}}
    environments = {("a", "one"): [entry("kenv-build-1")], ("b", "two"): [entry("kenv-build-2")],
                    ("a", "new"): [entry(None)], ("c", "same"): [entry("kenv-build-1")]}
    cluster_environments = {"curated": [entry("kenv-build-1")]}
    refs = buildwatch.waiting_on("kenv-build-1", environments, cluster_environments)
    assert [(r.kind, r.namespace, r.name) for r in refs] == [
        ("Environment", "a", "one"), ("Environment", "c", "same"), ("ClusterEnvironment", None, "curated")]
    assert buildwatch.waiting_on("kenv-build-9", environments, cluster_environments) == []
    # kopf leaves every annotation under its own storage prefix out of what it compares: not there
    assert not buildwatch.ANNOTATION.startswith("kenv.dev/")


async def test_each_finished_job_is_told_once_and_jobs_finished_before_the_watch_are_left_to_the_poll():
    told: list[tuple[list[str], str]] = []

    async def record(refs, job):
        told.append(([r.name for r in refs], job["metadata"]["uid"]))

    def job(uid: str, name: str, done: bool) -> dict:
        conditions = [{"type": "Complete", "status": "True"}] if done else []
        return {"metadata": {"uid": uid, "name": name}, "status": {"conditions": conditions}}
    follower = buildwatch.Follower(lambda name: [EnvironmentRef("Environment", "ns", f"waits-{name}")], record)
    follower.remember(job("old", "kenv-build-old", True))  # finished before the first list
    for seen in (job("old", "kenv-build-old", True), job("a", "kenv-build-a", False), job("a", "kenv-build-a", True),
                 job("a", "kenv-build-a", True), job("b", "kenv-build-a", True)):  # b: the same name again
        await follower.seen(seen)
    assert told == [(["waits-kenv-build-a"], "a"), (["waits-kenv-build-a"], "b")]
