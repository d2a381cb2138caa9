"""Credentials of private conda channels (spec.conda.channelCredentials) as rattler's authentication file.

Pure: the reconciler reads the Secrets and passes their data; builds.build_conda_auth_secret puts the result into
a per-build Secret that Kaniko mounts at /kaniko/kenv/conda, where kenv/conda_installer.py finds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kenv.config import CondaInstaller
from kenv.errors import SpecError
from kenv.models import ChannelCredential, EnvironmentSpec


class CredentialError(ValueError):
    """A Secret named by spec.conda.channelCredentials is missing or has none of the keys expected; the message
    names the field, the Secret and the keys."""


SECRET_FORMS = "keys username and password (HTTP basic authentication), token (a bearer token) or condaToken"


def conda_authentication(data: Mapping[str, str], where: str) -> dict[str, Any]:
    """rattler's authentication for one host from a Secret's data: username + password → BasicHTTP, token →
    BearerToken, condaToken → CondaToken. `where` names the field and the Secret in errors."""
    basic = "username" in data and "password" in data
    forms = [form for form, found in (("username and password", basic), ("token", "token" in data),
                                      ("condaToken", "condaToken" in data)) if found]
    if len(forms) > 1:
        raise CredentialError(f"{where} has {' and '.join(forms)}: keep one of them")
    if not forms:
        raise CredentialError(f"{where} needs {SECRET_FORMS}; its keys: {', '.join(sorted(data)) or 'none'}")
    key = "username" if basic else forms[0]
    if not data[key]:
        raise CredentialError(f"{where}: key {key} is empty")
    if basic:
        return {"BasicHTTP": {"username": data["username"], "password": data["password"]}}
    return {"BearerToken" if key == "token" else "CondaToken": data[key]}


# The label a Secret's owner sets to let kenv hand the Secret to a conda channel. Without it, anyone who may create
# an Environment could name any Secret of the namespace (a service account token has a `token` key) and have the
# operator, which reads Secrets by name, send it to a host of their choosing or print it from a Dockerfile step.
CREDENTIALS_LABEL = "kenv.dev/conda-credentials"


def conda_auth_file(credentials: Sequence[ChannelCredential], secrets: Mapping[str, Mapping[str, str] | None],
                    namespace: str, marked: Collection[str]) -> dict[str, Any]:
    """rattler's authentication file (RATTLER_AUTH_FILE) for spec.conda.channelCredentials: {host: authentication},
    given the data of each Secret they name in `namespace` (None: not found) and the names of those labelled
    CREDENTIALS_LABEL=true. Raises CredentialError."""
    auth: dict[str, Any] = {}
    for index, credential in enumerate(credentials):
        name = credential.secret_name
        where = f"spec.conda.channelCredentials[{index}].secretName: Secret {namespace}/{name}"
        data = secrets.get(name)
        if data is None:
            raise CredentialError(
                f"{where} not found; create it with {SECRET_FORMS} and the label {CREDENTIALS_LABEL}=true "
                f"(kubectl create secret generic {name} -n {namespace} --from-literal=username=... "
                f"--from-literal=password=... && kubectl label secret {name} -n {namespace} "
                f"{CREDENTIALS_LABEL}=true)")
        if name not in marked:
            raise CredentialError(
                f"{where} is not labelled {CREDENTIALS_LABEL}=true: kenv only gives a conda channel the Secrets "
                f"their owner marked for it (kubectl label secret {name} -n {namespace} {CREDENTIALS_LABEL}=true)")
        auth[credential.host] = conda_authentication(data, where)
    return auth


def check_conda_installer(spec: EnvironmentSpec, installer: CondaInstaller) -> None:
    """Channel credentials reach rattler only: refuse them with micromamba rather than build without them."""
    if spec.conda and spec.conda.channel_credentials and installer is not CondaInstaller.RATTLER:
        raise SpecError(
            f"spec.conda.channelCredentials: this operator installs conda environments with {installer.value} "
            f"(KENV_CONDA_INSTALLER={installer.value}), which cannot use channel credentials; remove "
            "channelCredentials, or ask the cluster's administrator to run the operator with "
            "KENV_CONDA_INSTALLER=rattler (the default; Helm value conda.installer)")
