"""Which filter applies to a project and model, and what its results look like (Azure's shapes)."""

from __future__ import annotations

from pipeserve.moderation.policy import Policy, PolicyBook, filtered, worst
from pipeserve.settings import ContentFilterRule


def test_the_most_specific_table_applies() -> None:
    book = PolicyBook(
        [
            ContentFilterRule(violence="high"),
            ContentFilterRule(project="kids", violence="low"),
            ContentFilterRule(model="fiction", violence="off"),
            ContentFilterRule(project="kids", model="fiction", violence="medium"),
        ]
    )
    assert book.policy("default", ["any"]).thresholds["violence"] == 3  # type: ignore[union-attr]
    assert book.policy("kids", ["any"]).thresholds["violence"] == 1  # type: ignore[union-attr]
    assert book.policy("default", ["fiction-id", "fiction"]).thresholds["violence"] == 4  # type: ignore[union-attr]
    assert book.policy("kids", ["fiction"]).thresholds["violence"] == 2  # type: ignore[union-attr]
    assert PolicyBook([ContentFilterRule(project="kids")]).policy("default", ["any"]) is None
    assert not PolicyBook([])


def test_results_in_azures_shape() -> None:
    policy = Policy.of(ContentFilterRule(hate="low", sexual="off", jailbreak=False))
    results = policy.results({"hate": 0.3, "sexual": 0.9, "violence": 0.6, "jailbreak": 0.8}, prompt=True)
    assert results == {
        "hate": {"filtered": True, "severity": "low"},
        "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "high"},
        "violence": {"filtered": True, "severity": "medium"},
        "jailbreak": {"filtered": False, "detected": True},
    }
    assert filtered(results) == ["hate", "violence"]
    assert "jailbreak" not in policy.results({}, prompt=False)
    assert Policy.of(ContentFilterRule()).results({"jailbreak": 0.6}, prompt=True)["jailbreak"]["filtered"]


def test_worst_keeps_the_more_severe() -> None:
    policy = Policy.of(ContentFilterRule())
    calm = policy.results({"violence": 0.3}, prompt=True)
    angry = policy.results({"violence": 0.8, "jailbreak": 0.6}, prompt=True)
    merged = worst(calm, angry)
    assert merged["violence"] == {"filtered": True, "severity": "high"}
    assert merged["jailbreak"] == {"filtered": True, "detected": True}
    assert worst(angry, calm) == merged
