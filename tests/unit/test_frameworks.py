"""hack/frameworks.py's pure part: a module's webhook manifests turned into configurations served on this host."""

from __future__ import annotations

from frameworks import local_webhooks, resources_of


def webhook(name: str, path: str, resources: list[str]) -> dict:
    return {"name": name, "admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "sideEffects": "None",
            "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": path}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": resources}]}


MANIFESTS = [
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
     "metadata": {"name": "mutating-webhook-configuration"},
     "webhooks": [webhook("mjob.kb.io", "/mutate-batch-v1-job", ["jobs"]),
                  webhook("mpod.kb.io", "/mutate--v1-pod", ["pods"])]},
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
     "metadata": {"name": "validating-webhook-configuration", "annotations": {"x": "y"}},
     "webhooks": [webhook("vpod.kb.io", "/validate--v1-pod", ["pods"])]},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webhook-service"}},
]


def test_service_references_become_urls_on_this_host_with_the_ca_and_release_names():
    configurations = local_webhooks(MANIFESTS, "kueue-", "https://127.0.0.1:9443", "Q0E=")
    assert [c["metadata"] for c in configurations] == [{"name": "kueue-mutating-webhook-configuration"},
                                                       {"name": "kueue-validating-webhook-configuration"}]
    first = configurations[0]["webhooks"][0]
    assert first["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-batch-v1-job", "caBundle": "Q0E="}
    assert first["failurePolicy"] == "Fail" and first["rules"] == MANIFESTS[0]["webhooks"][0]["rules"]
    assert MANIFESTS[0]["webhooks"][0]["clientConfig"]["service"]["path"] == "/mutate-batch-v1-job"  # not mutated


def test_only_kept_webhooks_and_patched_selectors():
    def pods_only_with_label(w: dict) -> None:
        if "pods" in resources_of(w):
            w["objectSelector"] = {"matchExpressions": [{"key": "app", "operator": "Exists"}]}
    configurations = local_webhooks(MANIFESTS, "", "https://127.0.0.1:1", "", keep=lambda w: "pods" in resources_of(w),
                                    patch=pods_only_with_label)
    assert [[w["name"] for w in c["webhooks"]] for c in configurations] == [["mpod.kb.io"], ["vpod.kb.io"]]
    assert all(w["objectSelector"]["matchExpressions"][0]["key"] == "app"
               for c in configurations for w in c["webhooks"])
    # a configuration left with no webhook is not created at all
    assert local_webhooks(MANIFESTS, "", "https://127.0.0.1:1", "", keep=lambda w: False) == []
