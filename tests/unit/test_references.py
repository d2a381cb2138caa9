"""Referenced ConfigMaps and Secrets: what an Environment names, the fingerprint that moves when they change, and
when a failed build is retried because one of them changed."""

from __future__ import annotations

from kenv.models import spec_from_body
from kenv.references import (
    Reference,
    changed_since_failure,
    fingerprint_of,
    names_references,
    record,
    referenced_objects,
)

ALL = {"docker": {"dockerfileFrom": {"name": "df", "key": "Dockerfile"},
                  "baseImageRegistry": {"address": "myacr.azurecr.io", "secretName": "acr"}},
       "build": {"caBundle": {"name": "proxy-ca", "key": "ca.crt"}}}


def test_every_named_object_is_found_in_the_references_namespace():
    assert referenced_objects(spec_from_body(ALL), "team") == [
        Reference("ConfigMap", "team", "df", "spec.docker.dockerfileFrom"),
        Reference("ConfigMap", "team", "proxy-ca", "spec.build.caBundle"),
        Reference("Secret", "team", "acr", "spec.docker.baseImageRegistry.secretName"),
    ]
    assert referenced_objects(spec_from_body({"pip": {"packages": ["six"]}}), "team") == []
    assert names_references({"spec": ALL}) and not names_references({"spec": {"pip": {"packages": ["six"]}}})


def test_channel_credential_secrets_are_references_whose_changes_retry_a_failed_build():
    spec = spec_from_body({"conda": {"packages": ["numpy"], "channelCredentials": [
        {"host": "conda.example.com", "secretName": "conda-creds"}, {"host": "*.example.org", "secretName": "org"}]}})
    found = referenced_objects(spec, "team")
    assert found == [
        Reference("Secret", "team", "conda-creds", "spec.conda.channelCredentials[0].secretName"),
        Reference("Secret", "team", "org", "spec.conda.channelCredentials[1].secretName"),
    ]
    assert names_references({"spec": {"conda": {"channelCredentials": [{"host": "a.b", "secretName": "s"}]}}})
    assert not names_references({"spec": {"conda": {"packages": ["numpy"], "channelCredentials": []}}})
    failed_with = fingerprint_of({found[0]: "10", found[1]: "20"})
    fixed = fingerprint_of({found[0]: "11", found[1]: "20"})  # e.g. the password was corrected
    assert fixed != failed_with
    assert changed_since_failure({"failedReferences": failed_with}, fixed)
    assert not changed_since_failure({"failedReferences": failed_with}, failed_with)


def test_fingerprint_moves_with_any_resource_version_and_is_order_free():
    a, b = Reference("ConfigMap", "t", "a", "f"), Reference("Secret", "t", "b", "g")
    first = fingerprint_of({a: "10", b: "20"})
    assert first == fingerprint_of({b: "20", a: "10"})
    assert first != fingerprint_of({a: "10", b: "21"})
    assert first != fingerprint_of({a: "10", b: "absent"})
    assert fingerprint_of({}) is None


def test_a_failed_build_is_retried_only_when_a_reference_changed_since():
    assert not changed_since_failure({"failedReferences": "f1"}, "f1")
    assert changed_since_failure({"failedReferences": "f1"}, "f2")
    assert not changed_since_failure({}, "f1")  # failed before fingerprints were recorded: wait as before


def test_record_keeps_the_fingerprint_and_the_one_a_failure_is_judged_against():
    failed = record({"phase": "Failed", "failedGeneration": 3}, {}, "f1")
    assert failed == {"phase": "Failed", "failedGeneration": 3, "referencesFingerprint": "f1", "failedReferences": "f1"}
    # A build failure names the references its build started with, even if they were fixed while it ran.
    started_with = record({"phase": "Failed", "failedGeneration": 3, "failedReferences": "f0"}, {}, "f1")
    assert started_with["failedReferences"] == "f0" and changed_since_failure(started_with, "f1")
    ready = record({"phase": "Ready"}, {"failedReferences": "f1", "buildReferences": "f1"}, "f2")
    assert ready["failedReferences"] is None and ready["buildReferences"] is None
    assert ready["referencesFingerprint"] == "f2"
    assert record({}, {"referencesFingerprint": "f1"}, "f1") == {}  # nothing to write while waiting
    assert "referencesFingerprint" not in record({"phase": "Building"}, {}, None)  # no references, no field
    assert record({"phase": "Building"}, {"referencesFingerprint": "f1"}, None)["referencesFingerprint"] is None


def test_a_failure_recorded_before_fingerprints_existed_is_given_one_once():
    before = {"phase": "Failed", "failedGeneration": 2}
    assert record({}, before, "f1") == {"referencesFingerprint": "f1", "failedReferences": "f1"}
    after = {**before, "referencesFingerprint": "f1", "failedReferences": "f1"}
    assert record({}, after, "f1") == {}  # and then the reference timer has nothing to do
