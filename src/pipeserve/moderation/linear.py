"""The offline classifier: the linear model that the `alt-profanity-check` package ships (TF-IDF over words, a
linear SVM, sigmoid-calibrated in 5 folds; trained on ~200k labelled comments) for how offensive a text is,
with the category cues of `lexicon.py` for which harm it is.

The model is read once from the package's joblib files and evaluated here with numpy and a dict, not through
scikit-learn, whose per-call checks cost ~2.5 ms a text; this costs ~20 µs for a message. The result is the same
(tests/moderation checks it against scikit-learn's).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from importlib import resources

import numpy as np

from pipeserve.moderation import lexicon
from pipeserve.moderation.classifier import PROMPT_CATEGORIES, Classifier

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # the vectorizer's token_pattern
_SENTENCE = re.compile(r"(?<=[.!?;\n])\s+")
_BOOST = 0.15  # how much the model's offensiveness raises a category that a cue names
_CONTEXT_DISCOUNT = 0.45  # how much talking *about* self-harm or sex lowers its score


class ProfanityModel:
    """alt-profanity-check's `predict_prob`, without scikit-learn at prediction time."""

    def __init__(self) -> None:
        import joblib  # with scikit-learn: what the package's files are pickled with

        data = resources.files("profanity_check") / "data"
        vectorizer = joblib.load(data / "vectorizer.joblib")
        model = joblib.load(data / "model.joblib")
        idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        folds = model.calibrated_classifiers_
        coef = np.stack([fold.estimator.coef_[0] for fold in folds])  # (folds, vocabulary)
        self._intercepts = np.array([fold.estimator.intercept_[0] for fold in folds])
        self._a = np.array([fold.calibrators[0].a_ for fold in folds])
        self._b = np.array([fold.calibrators[0].b_ for fold in folds])
        weighted = (coef * idf).T  # per word: its idf times each fold's weight
        self._words: dict[str, tuple[float, np.ndarray]] = {
            word: (float(idf[column]), weighted[column]) for word, column in vectorizer.vocabulary_.items()
        }
        self._baseline = self._calibrated(self._intercepts)

    def _calibrated(self, decision: np.ndarray) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(self._a * decision + self._b))))

    def probability(self, text: str) -> float:
        counts = Counter(word for word in _TOKEN.findall(text.lower()) if word in self._words)
        if not counts:
            return self._baseline
        total = np.zeros_like(self._intercepts)
        norm = 0.0
        for word, count in counts.items():
            idf, weights = self._words[word]
            total += count * weights
            norm += (count * idf) ** 2
        return self._calibrated(total / math.sqrt(norm) + self._intercepts)


def _strongest(cues: tuple[lexicon.Cue, ...], text: str) -> float:
    best = 0.0
    for cue in cues:
        if cue.score > best and cue.pattern.search(text):
            best = cue.score
    return best


def _hate(text: str) -> float:
    """Hostility in a sentence that names a group of people."""
    best = 0.0
    for sentence in _SENTENCE.split(text):
        if lexicon.GROUPS.search(sentence):
            best = max(best, _strongest(lexicon.HOSTILITY, sentence))
    return best


class LinearClassifier(Classifier):
    name = "linear"

    def __init__(self) -> None:
        self.model = ProfanityModel()

    def scores(self, text: str) -> Mapping[str, float]:
        lowered = " ".join(text.lower().replace("\u2019", "'").split())  # curly apostrophes as typed
        offensive = self.model.probability(lowered)
        cues = {
            "hate": _hate(lowered),
            "self_harm": _strongest(lexicon.SELF_HARM, lowered),
            "sexual": _strongest(lexicon.SEXUAL, lowered),
            "violence": _strongest(lexicon.VIOLENCE, lowered),
            "jailbreak": _strongest(lexicon.JAILBREAK, lowered),
        }
        if cues["self_harm"] and lexicon.SELF_HARM_CONTEXT.search(lowered):
            cues["self_harm"] -= _CONTEXT_DISCOUNT
        if cues["sexual"] and lexicon.SEXUAL_CONTEXT.search(lowered):
            cues["sexual"] -= _CONTEXT_DISCOUNT
        out = {}
        for category in PROMPT_CATEGORIES:
            score = cues[category]
            if score > 0 and category != "jailbreak":
                score += _BOOST * offensive
            out[category] = min(max(score, 0.0), 1.0)
        return out


CLASSIFIER = LinearClassifier
