"""The curated catalog: KENV_CATALOG parsing (bad entries named), what the operator applies and prunes, and the
chart's default catalog, which must start an operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kenv.catalog import CURATED_LABEL, catalog_table, desired_object, parse_catalog, stale

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts/kenv/values.yaml"


def test_the_charts_default_catalog_is_valid_and_uses_the_reserved_prefix():
    environments = yaml.safe_load(CHART_VALUES.read_text())["curated"]["environments"]
    entries = parse_catalog(json.dumps(environments))
    assert [e.name for e in entries] == [e["name"] for e in environments]
    assert len(entries) >= 5 and all(e.name.startswith("kenv-") for e in entries)
    assert all(e.spec.get("description") for e in entries)  # `kenv catalog` shows it


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[{"name": "sklearn", "spec": {}}]', "[0].name: 'sklearn' must start with the reserved prefix kenv-"),
        ('[{"name": "kenv-a", "spec": {}}, {"name": "kenv-a", "spec": {}}]', "[1].name: kenv-a is listed twice"),
        ('[{"name": "kenv-a", "spec": {"pip": {"packages": ["a b c"]}}}]', "[0] (kenv-a): spec.pip.packages[0]"),
        ('[{"name": "kenv-a", "image": "x"}]', "[0]: give exactly `name` and `spec`"),
        ('{"name": "kenv-a"}', "must be a list of {name, spec}"),
        ("[{", "not JSON"),
    ],
)
def test_bad_catalogs_are_refused_naming_the_entry(text, names):
    with pytest.raises(ValueError) as refused:
        parse_catalog(text)
    assert str(refused.value).startswith("KENV_CATALOG (chart value curated.environments)")
    assert names in str(refused.value)


def test_applied_object_carries_only_the_catalog_fields_and_the_owner_label():
    entry = parse_catalog('[{"name": "kenv-a.1", "spec": {"pip": {"packages": ["six==1.16.0"]}}}]')[0]
    assert desired_object(entry, "kenv-system") == {
        "apiVersion": "kenv.dev/v1alpha1", "kind": "ClusterEnvironment",
        "metadata": {"name": "kenv-a.1", "labels": {CURATED_LABEL: "kenv-system"}},
        "spec": {"pip": {"packages": ["six==1.16.0"]}}}


def test_only_entries_dropped_from_the_catalog_are_pruned():
    entries = parse_catalog('[{"name": "kenv-a", "spec": {}}, {"name": "kenv-b", "spec": {}}]')
    assert stale(["kenv-a", "kenv-c", "kenv-b", "kenv-d"], entries) == ["kenv-c", "kenv-d"]
    assert stale(["kenv-a"], parse_catalog("[]")) == ["kenv-a"]
    assert stale(["team-env"], parse_catalog("[]")) == []  # a label alone never gets a team's object deleted


def test_catalog_table_shows_status_and_description():
    objects = [
        {"metadata": {"name": "kenv-b"}, "spec": {"description": "second"}},
        {"metadata": {"name": "kenv-a"}, "spec": {"description": "first one"},
         "status": {"phase": "Ready", "version": 2, "image": "r/x@sha256:" + "a" * 64}},
    ]
    lines = catalog_table(objects).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "VERSION", "IMAGE", "DESCRIPTION"]
    assert lines[1].split() == ["kenv-a", "Ready", "2", "r/x@sha256:" + "a" * 64, "first", "one"]
    assert lines[2].split() == ["kenv-b", "Pending", "second"]
