"""Which content filter applies to a request: the `[[content_filters]]` tables of the settings, by project and
model, and what a classification means under one (Azure OpenAI's `{category: {filtered, severity}}`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeserve.moderation.classifier import CATEGORIES, SEVERITIES, severity
from pipeserve.settings import ContentFilterRule

_OFF = len(SEVERITIES)  # a threshold no severity reaches: annotate, never filter
_DETECTED = SEVERITIES.index("medium")  # a jailbreak score from which the prompt counts as an attempt


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds of one filter: the lowest severity (index in `SEVERITIES`) filtered in each category."""

    thresholds: Mapping[str, int]
    jailbreak: bool  # refuse prompts detected as jailbreak attempts

    @classmethod
    def of(cls, rule: ContentFilterRule) -> Policy:
        thresholds = {}
        for category in CATEGORIES:
            level = getattr(rule, category)
            thresholds[category] = _OFF if level == "off" else SEVERITIES.index(level)
        return cls(thresholds, rule.jailbreak)

    def results(self, scores: Mapping[str, float], *, prompt: bool) -> dict[str, Any]:
        """Azure's `content_filter_results` for `scores`: every category with whether it is filtered and its
        severity, and for a prompt whether a jailbreak attempt was detected."""
        out: dict[str, Any] = {}
        for category in CATEGORIES:
            level = severity(scores.get(category, 0.0))
            out[category] = {"filtered": level >= self.thresholds[category], "severity": SEVERITIES[level]}
        if prompt:
            detected = severity(scores.get("jailbreak", 0.0)) >= _DETECTED
            out["jailbreak"] = {"filtered": detected and self.jailbreak, "detected": detected}
        return out


def filtered(results: Mapping[str, Any]) -> list[str]:
    """The categories `results` filters."""
    return [category for category, result in results.items() if result.get("filtered")]


def worst(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Per category, the more severe of two results (a stream's text is classified piece by piece)."""
    out = dict(a)
    for category, result in b.items():
        mine = out.get(category)
        if mine is None or _rank(result) > _rank(mine):
            out[category] = result
    return out


def _rank(result: Mapping[str, Any]) -> tuple[bool, int]:
    level = result.get("severity")
    return bool(result.get("filtered")), SEVERITIES.index(level) if level in SEVERITIES else int(
        bool(result.get("detected"))
    )


class PolicyBook:
    """The policy for each (project, model): the most specific `[[content_filters]]` table that matches (one that
    names both, then one naming the model, then one naming the project, then one naming neither), or none."""

    def __init__(self, rules: Sequence[ContentFilterRule]) -> None:
        self.rules = [(rule, Policy.of(rule)) for rule in rules]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def policy(self, project: str, model_names: Sequence[str]) -> Policy | None:
        best: tuple[int, Policy] | None = None
        for rule, policy in self.rules:
            if rule.project is not None and rule.project != project:
                continue
            if rule.model is not None and rule.model not in model_names:
                continue
            rank = 2 * (rule.model is not None) + (rule.project is not None)
            if best is None or rank > best[0]:
                best = (rank, policy)
        return best[1] if best is not None else None
