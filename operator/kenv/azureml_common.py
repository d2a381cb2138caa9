"""What both directions of the Azure ML conversion share (kenv.azureml imports, kenv.azureml_export exports):
the Azure ML file names, the annotations that carry Azure ML metadata on a manifest, shmSize conversions and
spec validation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from kenv.errors import SpecError, describe_validation_error
from kenv.models import EnvironmentSpec

V1_DEFINITION = "azureml_environment.json"
V1_CONDA, V1_DOCKERFILE = "conda_dependencies.yml", "BaseDockerfile"
V2_SCHEMA = "https://azuremlschemas.azureedge.net/latest/environment.schema.json"
V2_FILE, V2_CONDA, V2_CONTEXT = "environment.yml", "conda.yml", "docker-context"
NAME_ANNOTATION, VERSION_ANNOTATION = "kenv.dev/azureml-name", "kenv.dev/azureml-version"
TAGS_ANNOTATION = "kenv.dev/azureml-tags"


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def shm_to_quantity(value: Any, label: str) -> int | str:
    """docker's `2g`/`512m`/bytes (binary units) to a Kubernetes quantity (`2Gi`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmgtp]?)(?:i?b)?", str(value).strip().lower())
    if not isinstance(value, str) or match is None:
        raise SpecError(f"{label}: docker.shmSize must be like 2g, 512m or a byte count, got {_show(value)}")
    number, unit = match.groups()
    if unit in ("", "b"):
        return int(float(number))
    return number + unit.upper() + "i"


def quantity_to_shm(quantity: int | str) -> str | None:
    """A Kubernetes quantity to docker's notation (`2Gi` -> `2g`, `2G` -> bytes); None if not a size."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]i|[kMGTPE])?", str(quantity))
    if match is None:
        return None
    number, suffix = match.groups()
    if suffix and suffix.endswith("i"):
        return number + suffix[0].lower()
    power = {None: 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}[suffix]
    return str(int(float(number) * 1000**power))


def _validate(spec: dict[str, Any], label: str) -> EnvironmentSpec:
    try:
        return EnvironmentSpec.model_validate(spec)
    except ValidationError as error:
        raise SpecError(_one_line(f"{label}: {describe_validation_error(error)}")) from None
