"""The classifier interface: text in, a score per harm category out, read as Azure's severities."""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping

# Azure OpenAI's harm categories; jailbreak (an attempt to make the model drop its rules) applies to prompts.
CATEGORIES = ("hate", "self_harm", "sexual", "violence")
PROMPT_CATEGORIES = (*CATEGORIES, "jailbreak")
SEVERITIES = ("safe", "low", "medium", "high")
# Scores at or above each bound are that severity: [0, .25) safe, [.25, .5) low, [.5, .75) medium, [.75, 1] high.
_BOUNDS = (0.25, 0.5, 0.75)


def severity(score: float) -> int:
    """The index in `SEVERITIES` of a score in [0, 1]."""
    return sum(score >= bound for bound in _BOUNDS)


class Classifier(ABC):
    """Scores text for each of `PROMPT_CATEGORIES`, in [0, 1]. Called on the event loop for every filtered
    request: an implementation is fast (well under a millisecond for a message) or does its work elsewhere."""

    name: str = ""

    @abstractmethod
    def scores(self, text: str) -> Mapping[str, float]:
        """A score for every category of `PROMPT_CATEGORIES` (a category it can't judge scores 0)."""


def load_classifier(name: str) -> Classifier:
    """The classifier `pipeserve.moderation.<name>` defines (its module's `CLASSIFIER` class)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"invalid classifier name {name!r}")
    try:
        module = importlib.import_module(f"pipeserve.moderation.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("pipeserve"):
            raise ValueError(
                f"the content classifier {name!r} needs {exc.name}: pip install 'pipeserve[moderation]'"
            ) from exc
        raise ValueError(
            f"unknown content classifier {name!r}: there is no module pipeserve.moderation.{name}"
        ) from exc
    classifier: Classifier = module.CLASSIFIER()
    return classifier
