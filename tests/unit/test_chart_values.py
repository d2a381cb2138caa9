"""charts/kenv without a cluster or helm: CRD copies, KENV_* variables, values.yaml vs values.schema.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from kenv.config import CondaInstaller, OperatorSettings, PendingImagePolicy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kenv"


def test_chart_crds_are_the_repository_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    differing = sorted(n for n in repo.keys() | chart.keys() if repo.get(n) != chart.get(n))
    assert repo and not differing, f"charts/kenv/crds/ differs from crds/ in {differing}: run `make crds`"


def test_every_kenv_variable_the_chart_sets_is_an_operator_setting() -> None:
    template = (CHART / "templates" / "deployment.yaml").read_text()
    variables = set(re.findall(r"name: (KENV_[A-Z_]+)", template))
    settings = {f"KENV_{name.upper()}" for name in OperatorSettings.model_fields}
    assert variables and variables <= settings, f"unknown to kenv.config: {sorted(variables - settings)}"
    required = {f"KENV_{n.upper()}" for n, f in OperatorSettings.model_fields.items() if f.is_required()}
    assert required <= variables


def test_values_and_schema_describe_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False  # a mistyped --set key fails instead of being ignored
    assert set(values) == set(schema["properties"])
    for key in ("webhook", "certManager", "metrics", "builderImages", "conda", "buildResources", "networkPolicy"):
        assert set(values[key]) <= set(schema["properties"][key]["properties"]), key


def test_values_defaults_match_the_operator_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    fields = OperatorSettings.model_fields
    assert values["maxParallelBuilds"] == fields["max_parallel_builds"].default
    assert values["pendingImagePolicy"] == fields["pending_image_policy"].default.value
    assert values["historyLimit"] == fields["history_limit"].default
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    assert schema["pendingImagePolicy"]["enum"] == [p.value for p in PendingImagePolicy]
    assert values["logFormat"] == fields["log_format"].default
    assert values["conda"]["installer"] == fields["conda_installer"].default.value
    assert schema["conda"]["properties"]["installer"]["enum"] == [i.value for i in CondaInstaller]
    assert values["webhook"]["port"] == fields["webhook_port"].default
    assert values["metrics"]["port"] == fields["metrics_port"].default
    assert values["packageCache"]["hostPath"] == fields["package_cache_dir"].default
    cache_pattern = fields["package_cache_dir"].metadata[0].pattern
    assert schema["packageCache"]["properties"]["hostPath"]["pattern"] == cache_pattern
    assert values["admission"]["replicas"] == 2 and values["controller"]["replicas"] == 2
    default_build = fields["build_resources"].default_factory()  # type: ignore[misc]
    assert values["buildResources"] == default_build.model_dump()
    quantity = schema["buildResources"]["properties"]["limits"]["additionalProperties"]["anyOf"][0]["pattern"]
    from kenv.config import QUANTITY
    assert quantity == f"^{QUANTITY.pattern}$"  # the chart refuses what the operator would
