"""The labelled sample under data/: one file per category, `label<TAB>text` lines (1: harmful in that category)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Item:
    text: str
    harmful: bool


def sample(category: str, *, holdout: bool = False) -> list[Item]:
    """The category's sample; `holdout`: the smaller one written after the classifier's cues were final."""
    items = []
    for line in (DATA / ("holdout" if holdout else "") / f"{category}.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        label, text = line.split("\t", 1)
        items.append(Item(text, label == "1"))
    return items


@dataclass(frozen=True)
class Measured:
    precision: float
    recall: float
    items: int
    false_positives: list[str]
    false_negatives: list[str]


def measure(category: str, flagged: Mapping[str, bool], *, holdout: bool = False) -> Measured:
    """Precision and recall of `flagged` (text → flagged in `category`) on the category's sample."""
    items = sample(category, holdout=holdout)
    tp = sum(1 for i in items if i.harmful and flagged[i.text])
    fp = [i.text for i in items if not i.harmful and flagged[i.text]]
    fn = [i.text for i in items if i.harmful and not flagged[i.text]]
    precision = tp / (tp + len(fp)) if tp + len(fp) else 1.0
    recall = tp / (tp + len(fn)) if tp + len(fn) else 1.0
    return Measured(precision, recall, len(items), fp, fn)
