"""Private conda channels: spec.conda.channelCredentials name Secrets whose keys become rattler's authentication
file, mounted into the Kaniko build container at /kaniko/kenv/conda (never in the image, the context or its hash)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from kenv import builds, condaauth, kube, references, validation, versions
from kenv.config import CondaInstaller, OperatorSettings
from kenv.crd import build_crd
from kenv.errors import SpecError, describe_validation_error
from kenv.models import EnvironmentSpec, spec_from_body
from kenv.reconcile import Attempt, MissingReference, Reconciler
from kenv.refs import EnvironmentRef
from kenv.render import Externals, render_context

CREDS = [{"host": "conda.example.com", "secretName": "conda-creds"}]
STRUCTURED = {"channels": ["https://conda.example.com/team", "conda-forge"], "packages": ["numpy=1.26"]}
ENVIRONMENT_YAML = "name: t\nchannels: [https://conda.example.com/team]\ndependencies: [numpy=1.26]\n"
SETTINGS = OperatorSettings(destination_repo="registry.local:5000/kenv/envs")
REF = EnvironmentRef("Environment", "team", "train")


def spec(credentials: list[dict[str, Any]] | None = None, conda: dict[str, Any] | None = None,
         **rest: Any) -> EnvironmentSpec:
    section = dict(conda if conda is not None else STRUCTURED)
    if credentials is not None:
        section["channelCredentials"] = credentials
    return spec_from_body({"conda": section, **rest})


def error_of(credentials: list[dict[str, Any]], **rest: Any) -> str:
    with pytest.raises(ValidationError) as info:
        spec(credentials, **rest)
    return describe_validation_error(info.value)


# --- the model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["conda.example.com", "*.example.com", "127.0.0.1", "repo-1.internal", "localhost"])
def test_host_names_and_wildcards_are_accepted(host):
    assert spec([{"host": host, "secretName": "s"}]).conda.channel_credentials[0].host == host


def test_fields_are_camel_case_and_work_with_either_conda_form():
    structured = spec(CREDS)
    assert structured.model_dump(by_alias=True, exclude_defaults=True)["conda"]["channelCredentials"] == CREDS
    assert spec(CREDS, conda={"environmentYaml": ENVIRONMENT_YAML}).conda.channel_credentials[0].secret_name == \
        "conda-creds"


@pytest.mark.parametrize(("host", "message"), [
    ("https://conda.example.com/team", "spec.conda.channelCredentials[0].host: 'https://conda.example.com/team' is "
     "not a host name: write the host only, without scheme, port or path: conda.example.com"),
    ("conda.example.com:8443", "spec.conda.channelCredentials[0].host: 'conda.example.com:8443' is not a host name: "
     "write the host only, without scheme, port or path: conda.example.com"),
    ("conda.example.com/team", "spec.conda.channelCredentials[0].host: 'conda.example.com/team' is not a host name: "
     "write the host only, without scheme, port or path: conda.example.com"),
    ("https://user:pw@127.0.0.1:8443", "spec.conda.channelCredentials[0].host: 'https://user:pw@127.0.0.1:8443' is "
     "not a host name: write the host only, without scheme, port or path: 127.0.0.1"),
    ("Conda.Example.com", "spec.conda.channelCredentials[0].host: 'Conda.Example.com': write the host name in lower "
     "case, as channel URLs are looked up: conda.example.com"),
    ("conda.*.com", "spec.conda.channelCredentials[0].host: 'conda.*.com' is not a host name: write the host only, "
     "without scheme, port or path: conda.example.com, or *.example.com for every host under example.com"),
    ("conda example.com", "spec.conda.channelCredentials[0].host: 'conda example.com' is not a host name: write the "
     "host only, without scheme, port or path: conda.example.com, or *.example.com for every host under "
     "example.com"),
    ("conda.example.com\n", "spec.conda.channelCredentials[0].host: 'conda.example.com\\n' is not a host name: "
     "write the host only, without scheme, port or path: conda.example.com"),
])
def test_a_host_with_scheme_port_path_or_capitals_is_refused_with_the_fix(host, message):
    assert error_of([{"host": host, "secretName": "s"}]) == message


def test_the_entry_is_named_by_its_index():
    message = error_of([*CREDS, {"host": "https://other.example.com", "secretName": "s"}])
    assert message.startswith("spec.conda.channelCredentials[1].host: 'https://other.example.com' is not a host")


@pytest.mark.parametrize("entry", [{"host": "", "secretName": "s"}, {"host": "a.b"}, {"secretName": "s"},
                                   {"host": "a.b", "secretName": "Not_A_Name"}, {"host": "a.b", "secretName": "s",
                                                                                 "password": "x"}])
def test_malformed_entries_are_refused(entry):
    assert error_of([entry]).startswith("spec.conda.channelCredentials[0]")


def test_one_entry_per_host():
    message = error_of([*CREDS, {"host": "*.example.com", "secretName": "b"},
                        {"host": "conda.example.com", "secretName": "c"}])
    assert message == ("spec.conda.channelCredentials[2].host 'conda.example.com' is already given by "
                       "spec.conda.channelCredentials[0]: keep one entry per host")


@pytest.mark.parametrize("builder", ["buildah", "buildkit"])
def test_only_kaniko_can_use_them(builder):
    assert error_of(CREDS, build={"builder": builder}) == (
        f"spec.conda.channelCredentials need spec.build.builder kaniko, not {builder}: {builder} does not expose a "
        "mounted Secret to RUN steps, where conda installs; set spec.build.builder to kaniko or remove "
        "spec.conda.channelCredentials")
    assert spec([], build={"builder": builder}).build.builder == builder  # an empty list is no credentials
    assert spec(CREDS, build={"builder": "kaniko"}).conda.channel_credentials


def test_the_crd_carries_the_rules_for_the_api_server():
    schema = build_crd("Environment")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = schema["properties"]["conda"]["properties"]["channelCredentials"]
    assert field["x-kubernetes-list-type"] == "map" and field["x-kubernetes-list-map-keys"] == ["host"]
    assert field["maxItems"] == 32 and field["items"]["required"] == ["host", "secretName"]
    assert field["items"]["x-kubernetes-validations"][0]["rule"] == \
        f"self.host.matches('{validation.CHANNEL_HOST_PATTERN}')"
    assert "\\" not in validation.CHANNEL_HOST_PATTERN  # a CEL string literal as is
    assert field["items"]["properties"]["host"]["maxLength"] == 253
    rules = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
    assert any("self.conda.channelCredentials" in rule and "self.build.builder == 'kaniko'" in rule
               for rule in rules)


# --- not content -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conda", [STRUCTURED, {"environmentYaml": ENVIRONMENT_YAML}])
@pytest.mark.parametrize("installer", ["rattler", "micromamba"])
def test_credentials_move_neither_the_content_hash_nor_the_runtime_hash(conda, installer):
    externals = Externals(conda_installer=installer)
    without, with_credentials = spec(conda=conda), spec(CREDS, conda=conda)
    assert render_context(with_credentials, externals).files == render_context(without, externals).files
    assert render_context(with_credentials, externals).hash == render_context(without, externals).hash
    assert versions.runtime_hash(with_credentials) == versions.runtime_hash(without)
    other = spec([{"host": "*.example.com", "secretName": "other"}], conda=conda)
    assert render_context(other, externals).hash == render_context(without, externals).hash


# --- the authentication file ---------------------------------------------------------------------------------------

WHERE = "spec.conda.channelCredentials[0].secretName: Secret team/conda-creds"


@pytest.mark.parametrize(("data", "authentication"), [
    ({"username": "u", "password": "p"}, {"BasicHTTP": {"username": "u", "password": "p"}}),
    ({"username": "u", "password": ""}, {"BasicHTTP": {"username": "u", "password": ""}}),
    ({"token": "t0k"}, {"BearerToken": "t0k"}),
    ({"condaToken": "ct"}, {"CondaToken": "ct"}),
])
def test_secret_keys_become_rattlers_authentication(data, authentication):
    assert condaauth.conda_authentication(data, WHERE) == authentication


@pytest.mark.parametrize(("data", "message"), [
    ({}, f"{WHERE} needs keys username and password (HTTP basic authentication), token (a bearer token) or "
         "condaToken; its keys: none"),
    ({"username": "u"}, f"{WHERE} needs keys username and password (HTTP basic authentication), token (a bearer "
                        "token) or condaToken; its keys: username"),
    ({".dockerconfigjson": "{}"}, f"{WHERE} needs keys username and password (HTTP basic authentication), token "
                                  "(a bearer token) or condaToken; its keys: .dockerconfigjson"),
    ({"username": "u", "password": "p", "token": "t"}, f"{WHERE} has username and password and token: keep one "
                                                       "of them"),
    ({"token": "t", "condaToken": "c"}, f"{WHERE} has token and condaToken: keep one of them"),
    ({"token": ""}, f"{WHERE}: key token is empty"),
    ({"username": "", "password": "p"}, f"{WHERE}: key username is empty"),
])
def test_a_secret_without_one_clear_form_is_refused_naming_the_keys(data, message):
    with pytest.raises(condaauth.CredentialError) as info:
        condaauth.conda_authentication(data, WHERE)
    assert str(info.value) == message


def test_messages_never_hold_secret_values():
    for data in ({"username": "us3r", "password": "s3cret", "token": "t0ken"}, {"password": "s3cret"},
                 {"token": "t0ken", "condaToken": "c0nda"}):
        with pytest.raises(condaauth.CredentialError) as info:
            condaauth.conda_authentication(data, WHERE)
        assert not any(value in str(info.value) for value in ("us3r", "s3cret", "t0ken", "c0nda"))


def test_the_file_is_keyed_by_host_and_one_secret_may_serve_several():
    credentials = spec([{"host": "conda.example.com", "secretName": "basic"},
                        {"host": "*.anaconda.org", "secretName": "anaconda"},
                        {"host": "127.0.0.1", "secretName": "basic"}]).conda.channel_credentials
    secrets = {"basic": {"username": "u", "password": "p"}, "anaconda": {"condaToken": "ct"}}
    assert condaauth.conda_auth_file(credentials, secrets, "team", ["basic", "anaconda"]) == {
        "conda.example.com": {"BasicHTTP": {"username": "u", "password": "p"}},
        "*.anaconda.org": {"CondaToken": "ct"},
        "127.0.0.1": {"BasicHTTP": {"username": "u", "password": "p"}},
    }
    assert condaauth.conda_auth_file([], {}, "team", []) == {}


def test_a_missing_secret_names_the_field_and_how_to_create_it():
    credentials = spec(CREDS).conda.channel_credentials
    with pytest.raises(condaauth.CredentialError) as info:
        condaauth.conda_auth_file(credentials, {"conda-creds": None}, "team", [])
    assert str(info.value) == (
        f"{WHERE} not found; create it with keys username and password (HTTP basic authentication), token (a "
        "bearer token) or condaToken and the label kenv.dev/conda-credentials=true (kubectl create secret generic "
        "conda-creds -n team --from-literal=username=... --from-literal=password=... && kubectl label secret "
        "conda-creds -n team kenv.dev/conda-credentials=true)")


def test_a_secret_its_owner_did_not_mark_for_kenv_is_never_used():
    credentials = spec(CREDS).conda.channel_credentials
    token = {"token": "a-service-account-token"}
    with pytest.raises(condaauth.CredentialError) as info:
        condaauth.conda_auth_file(credentials, {"conda-creds": token}, "team", [])
    assert "is not labelled kenv.dev/conda-credentials=true" in str(info.value)
    assert "a-service-account-token" not in str(info.value)


# --- the build objects ---------------------------------------------------------------------------------------------

def plan() -> builds.BuildPlan:
    return builds.plan_build(render_context(spec(CREDS)), SETTINGS)


def build_job(builder: str = "kaniko", conda_auth_secret: str | None = None) -> dict[str, Any]:
    return builds.build_job(plan(), spec(build={"builder": builder}).build, SETTINGS, requested_by="Environment/t/e",
                            context_files=["Dockerfile"], has_docker_config=True, has_ca=False,
                            conda_auth_secret=conda_auth_secret)


def test_the_kaniko_job_mounts_the_secret_read_only_at_kaniko_kenv_conda():
    job = build_job(conda_auth_secret=plan().conda_auth_secret)
    pod = job["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["conda-auth"] == {"name": "conda-auth", "mountPath": "/kaniko/kenv/conda", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["conda-auth"]["secret"] == {"secretName": plan().job_name + "-conda",
                                               "items": [{"key": "auth.json", "path": "auth.json"}]}
    assert mounts["docker-config"]["mountPath"] == "/kaniko/.docker"  # the registry credentials stay as they were


@pytest.mark.parametrize("builder", ["kaniko", "buildah", "buildkit"])
def test_no_credentials_no_mount(builder):
    pod = build_job(builder)["spec"]["template"]["spec"]
    assert "conda-auth" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert "conda-auth" not in {v["name"] for v in pod["volumes"]}
    assert not any("kenv/conda" in json.dumps(m) for m in pod["containers"][0]["volumeMounts"])


@pytest.mark.parametrize("builder", ["buildah", "buildkit"])
def test_other_builders_never_get_the_secret(builder):
    with pytest.raises(ValueError, match="conda channel credentials need the kaniko builder"):
        build_job(builder, conda_auth_secret="x-conda")


def test_the_per_build_secret_holds_the_file_beside_the_docker_config():
    auth = {"conda.example.com": {"BearerToken": "t"}}
    both = builds.BuildCredentials(builds.basic_auth_config("r.example", "u", "p"), auth).secrets(plan())
    docker, conda = both
    assert conda["metadata"]["name"] == plan().job_name + "-conda" and conda["type"] == "Opaque"
    assert conda["metadata"]["namespace"] == SETTINGS.build_namespace
    assert conda["metadata"]["labels"] == docker["metadata"]["labels"]
    assert json.loads(base64.b64decode(conda["data"]["auth.json"])) == auth
    assert builds.BuildCredentials({"auths": {}}).secrets(plan()) == []
    assert [s["metadata"]["name"] for s in builds.BuildCredentials({"auths": {}}, auth).secrets(plan())] == \
        [plan().job_name + "-conda"]


# --- the reconciler ------------------------------------------------------------------------------------------------

def test_micromamba_refuses_credentials():
    condaauth.check_conda_installer(spec(CREDS), CondaInstaller.RATTLER)
    condaauth.check_conda_installer(spec(), CondaInstaller.MICROMAMBA)
    with pytest.raises(SpecError) as info:
        condaauth.check_conda_installer(spec(CREDS), CondaInstaller.MICROMAMBA)
    assert str(info.value) == (
        "spec.conda.channelCredentials: this operator installs conda environments with micromamba "
        "(KENV_CONDA_INSTALLER=micromamba), which cannot use channel credentials; remove channelCredentials, or "
        "ask the cluster's administrator to run the operator with KENV_CONDA_INSTALLER=rattler (the default; Helm "
        "value conda.installer)")


async def test_the_reconciler_fails_the_environment_under_micromamba(monkeypatch):
    async def no_references(spec: EnvironmentSpec, namespace: str) -> None:
        return None

    monkeypatch.setattr(references, "fingerprint", no_references)
    settings = SETTINGS.model_copy(update={"conda_installer": CondaInstaller.MICROMAMBA})
    body = {"metadata": {"name": "train", "namespace": "team", "generation": 2, "uid": "u"},
            "spec": {"conda": {**STRUCTURED, "channelCredentials": CREDS}},
            "status": {"phase": "Failed", "desiredHash": "old", "failedGeneration": 2}}
    outcome = await Reconciler(settings, registry=None).reconcile(REF, body, logging.getLogger("test"))
    assert outcome.status["phase"] == "Failed" and outcome.status["desiredHash"] is None
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.conda.channelCredentials: this operator installs conda environments "
                                       "with micromamba")
    assert outcome.events[0][:2] == ("Warning", "InvalidSpec")


class FakeKube:
    """The kube functions _start_build calls, recording what was created and owned."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets
        self.created: list[dict[str, Any]] = []
        self.owned: list[tuple[str, str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get((namespace, name))

    async def read_secret_with_labels(self, namespace: str, name: str
                                      ) -> tuple[dict[str, str], dict[str, str]] | None:
        data = self.secrets.get((namespace, name))
        return None if data is None else (data, {condaauth.CREDENTIALS_LABEL: "true"})

    async def read_job(self, namespace: str, name: str) -> None:
        return None

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        metadata = {**obj["metadata"], "uid": "uid-1"} if obj["kind"] == "Job" else obj["metadata"]
        return {**obj, "metadata": metadata}

    async def set_owner(self, kind: str, namespace: str, name: str, owner: dict[str, Any]) -> None:
        assert owner["kind"] == "Job" and owner["uid"] == "uid-1"
        self.owned.append((kind, namespace, name))


def attempt(environment: EnvironmentSpec, ref: EnvironmentRef = REF) -> Attempt:
    context = render_context(environment)
    return Attempt(ref=ref, uid="u", spec=environment, definition={}, context=context, ca_bundle=None,
                   plan=builds.plan_build(context, SETTINGS), current={}, generation=1, token=None, forced=False)


@pytest.fixture
def fake_kube(monkeypatch) -> FakeKube:
    fake = FakeKube({("team", "conda-creds"): {"username": "u", "password": "p"},
                     ("kenv-system", "conda-creds"): {"token": "cluster"}})
    for name in ("read_secret", "read_secret_with_labels", "read_job", "list_jobs", "create", "set_owner"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    return fake


async def test_a_build_gets_its_own_conda_secret_owned_by_the_job(fake_kube):
    started = attempt(spec(CREDS))
    job, created = await Reconciler(SETTINGS, registry=None)._start_build(
        started, {"auths": {}}, logging.getLogger("test"))
    assert created and job is not None
    name = started.plan.job_name
    secrets = {o["metadata"]["name"]: o for o in fake_kube.created if o["kind"] == "Secret"}
    assert list(secrets) == [f"{name}-conda"]  # no registry credentials here: no docker-config Secret
    assert json.loads(base64.b64decode(secrets[f"{name}-conda"]["data"]["auth.json"])) == {
        "conda.example.com": {"BasicHTTP": {"username": "u", "password": "p"}}}
    assert ("Secret", "kenv-system", f"{name}-conda") in fake_kube.owned
    assert ("ConfigMap", "kenv-system", f"{name}-context") in fake_kube.owned
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "conda-auth", "mountPath": "/kaniko/kenv/conda", "readOnly": True} in mounts


async def test_a_cluster_environment_reads_them_from_the_build_namespace(fake_kube):
    cluster = EnvironmentRef("ClusterEnvironment", None, "kenv-train")
    auth = await Reconciler(SETTINGS, registry=None).conda_auth(cluster, spec(CREDS))
    assert auth == {"conda.example.com": {"BearerToken": "cluster"}}


async def test_no_credentials_no_conda_secret(fake_kube):
    started = attempt(spec())
    await Reconciler(SETTINGS, registry=None)._start_build(
        started, {"auths": {}}, logging.getLogger("test"))
    assert [o["kind"] for o in fake_kube.created] == ["ConfigMap", "Job"]
    assert "conda-auth" not in json.dumps(fake_kube.created[-1])


async def test_a_missing_or_wrong_secret_is_a_missing_reference(fake_kube):
    reconciler = Reconciler(SETTINGS, registry=None)
    with pytest.raises(MissingReference, match=r"^spec.conda.channelCredentials\[0\].secretName: Secret "
                                               r"team/absent not found; create it"):
        await reconciler._start_build(attempt(spec([{"host": "conda.example.com", "secretName": "absent"}])),
                                      {"auths": {}}, logging.getLogger("test"))
    fake_kube.secrets[("team", "conda-creds")] = {"user": "u"}
    with pytest.raises(MissingReference, match="needs keys username and password .*; its keys: user$"):
        await reconciler.conda_auth(REF, spec(CREDS))
    assert fake_kube.created == []  # nothing is created before every Secret was read
