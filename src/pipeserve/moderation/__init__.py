"""Content filtering: prompts and answers classified for harm, Azure OpenAI's shapes on the wire.

`classifier.py` is the interface a classifier implements (categories, severities), `linear.py` the offline one
(alt-profanity-check's linear model with category cues from `lexicon.py`), `policy.py` which thresholds apply to
a project and model, and `filter.py` what a request goes through when a policy applies to it.
"""

from __future__ import annotations

from pipeserve.moderation.classifier import CATEGORIES, PROMPT_CATEGORIES, SEVERITIES, Classifier, load_classifier

__all__ = ["CATEGORIES", "PROMPT_CATEGORIES", "SEVERITIES", "Classifier", "load_classifier"]
