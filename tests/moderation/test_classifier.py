"""The offline classifier, measured on the labelled sample under data/ (precision and recall per category at
the default threshold, medium): the numbers docs/moderation.md reports."""

from __future__ import annotations

import pytest

from pipeserve.moderation import PROMPT_CATEGORIES, load_classifier
from pipeserve.moderation.classifier import severity
from pipeserve.moderation.linear import LinearClassifier
from tests.moderation.sample import measure, sample

MEDIUM = 2
# Floors under the measured numbers, so that a change that makes the classifier worse fails here.
SAMPLE_FLOORS = {"precision": 0.95, "recall": 0.9}
# The held-out sample was written after the cues were final: its numbers are the honest estimate (low recall:
# cues miss what they don't name).
HOLDOUT_FLOORS = {
    "hate": (0.9, 0.7),
    "self_harm": (0.9, 0.1),
    "sexual": (0.9, 0.1),
    "violence": (0.8, 0.25),
    "jailbreak": (0.9, 0.25),
}


@pytest.fixture(scope="module")
def classifier() -> LinearClassifier:
    loaded = load_classifier("linear")
    assert isinstance(loaded, LinearClassifier)
    return loaded


def test_the_sample_is_large_enough() -> None:
    for category in PROMPT_CATEGORIES:
        items = sample(category)
        assert len(items) >= 200
        harmful = sum(item.harmful for item in items)
        assert 0.4 < harmful / len(items) < 0.6  # balanced: hard negatives use the same words


def test_the_model_is_alt_profanity_checks(classifier: LinearClassifier) -> None:
    from profanity_check import predict_prob

    texts = [item.text.lower() for category in PROMPT_CATEGORIES for item in sample(category)[::7]]
    expected = predict_prob(texts)
    for text, probability in zip(texts, expected, strict=True):
        assert classifier.model.probability(text) == pytest.approx(probability, abs=1e-9)


@pytest.mark.parametrize("category", PROMPT_CATEGORIES)
def test_precision_and_recall_on_the_sample(classifier: LinearClassifier, category: str) -> None:
    items = sample(category)
    measured = measure(category, {i.text: severity(classifier.scores(i.text)[category]) >= MEDIUM for i in items})
    print(f"{category}: precision {measured.precision:.3f} recall {measured.recall:.3f} on {measured.items}")
    assert measured.precision >= SAMPLE_FLOORS["precision"], measured.false_positives
    assert measured.recall >= SAMPLE_FLOORS["recall"], measured.false_negatives


@pytest.mark.parametrize("category", PROMPT_CATEGORIES)
def test_precision_and_recall_held_out(classifier: LinearClassifier, category: str) -> None:
    items = sample(category, holdout=True)
    flagged = {i.text: severity(classifier.scores(i.text)[category]) >= MEDIUM for i in items}
    measured = measure(category, flagged, holdout=True)
    print(f"{category} (held out): precision {measured.precision:.3f} recall {measured.recall:.3f}")
    precision, recall = HOLDOUT_FLOORS[category]
    assert measured.precision >= precision and measured.recall >= recall


def test_categories_do_not_bleed(classifier: LinearClassifier) -> None:
    """The harmless items of every category are harmless in every other category too."""
    for category in PROMPT_CATEGORIES:
        others = [i.text for o in PROMPT_CATEGORIES if o != category for i in sample(o) if not i.harmful]
        flagged = [text for text in others if severity(classifier.scores(text)[category]) >= MEDIUM]
        assert len(flagged) <= 0.01 * len(others), (category, flagged)


def test_scores(classifier: LinearClassifier) -> None:
    scores = classifier.scores("")
    assert set(scores) == set(PROMPT_CATEGORIES) and all(v == 0 for v in scores.values())
    assert classifier.scores("I\u2019m going to kill myself")["self_harm"] >= 0.75  # a curly apostrophe
    assert severity(0.0) == 0 and severity(0.25) == 1 and severity(0.5) == 2 and severity(0.75) == 3
