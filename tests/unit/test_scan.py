"""hack/scan.py's verdict on checkov's findings: every failure answered, no answer left over."""

from __future__ import annotations

from pathlib import Path

import yaml

from scan import ANSWERS, judge

ANSWERED = {"CKV_K8S_22": {"why": "Writable root: builders unpack there", "resources": ["build-job-*.yaml:Job.*"]},
            "CKV_K8S_38": {"why": "Token: the operator is an API client", "resources": ["chart.yaml:Deployment.*"]}}


def test_every_failure_must_be_answered_for_its_resource():
    failed = [("CKV_K8S_22", "Job.kenv-system.build-kaniko", "build-job-kaniko.yaml"),
              ("CKV_K8S_38", "Deployment.kenv-system.kenv-admission", "chart.yaml"),
              ("CKV_K8S_22", "Deployment.kenv-system.kenv-admission", "chart.yaml"),  # answered for Jobs only
              ("CKV_K8S_99", "Job.kenv-system.build-kaniko", "build-job-kaniko.yaml")]
    unanswered, stale = judge(failed, ANSWERED)
    assert unanswered == ["CKV_K8S_22 chart.yaml:Deployment.kenv-system.kenv-admission",
                          "CKV_K8S_99 build-job-kaniko.yaml:Job.kenv-system.build-kaniko"]
    assert stale == []


def test_an_answer_nothing_fails_any_more_is_reported():
    unanswered, stale = judge([("CKV_K8S_22", "Job.kenv-system.build-kaniko", "build-job-kaniko.yaml")], ANSWERED)
    assert unanswered == [] and stale == ["CKV_K8S_38 chart.yaml:Deployment.*"]


def test_the_answers_file_gives_a_reason_and_resources_for_each_check():
    answers = yaml.safe_load(Path(ANSWERS).read_text())
    assert answers
    for check, answer in answers.items():
        assert check.startswith("CKV_K8S_") and answer["resources"] and len(answer["why"]) > 40, check
