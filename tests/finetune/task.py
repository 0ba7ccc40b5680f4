"""A generated task the base model can't do and a fine-tune learns fast: a fixed JSON answer, unasked for.

Each example is a sentence about a person; the answer is always `{"name": ..., "age": ..., "city": ...}` in
that key order, while the prompt never mentions JSON. SmolLM2-135M-Instruct answers such a sentence in prose.
"""

from __future__ import annotations

import json
import random
from typing import Any

NAMES = [
    "Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo",
    "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe",
]  # fmt: skip
CITIES = [
    "Paris", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Quito", "Perth", "Seoul", "Dakar", "Porto", "Hanoi",
    "Tunis", "Riga", "Accra", "Bern",
]  # fmt: skip
SHAPES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, {age}, from {city}.",
    "{name} ({age}) moved to {city} last year.",
    "In {city} lives {name}, who is {age}.",
    "My friend {name} turned {age} in {city}.",
]


def example(rng: random.Random, padding: int = 0) -> dict[str, Any]:
    """One entry; `padding` adds that many words of filler to the sentence (longer examples for benchmarks)."""
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    sentence = rng.choice(SHAPES).format(name=name, age=age, city=city)
    if padding:
        filler = " ".join(
            rng.choice(["they", "enjoy", "long", "walks", "and", "good", "books", "often"]) for _ in range(padding)
        )
        sentence = f"{sentence} Also, {filler}."
    answer = json.dumps({"name": name, "age": age, "city": city})
    return {
        "messages": [{"role": "user", "content": sentence}, {"role": "assistant", "content": answer}],
    }


def entries(count: int, seed: int = 0, padding: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [example(rng, padding) for _ in range(count)]


def is_answer(text: str | None, entry: dict[str, Any]) -> bool:
    """Whether `text` is exactly the entry's expected JSON (parsed, so spacing doesn't matter)."""
    try:
        return bool(json.loads(text or "") == json.loads(entry["messages"][-1]["content"]))
    except ValueError:
        return False


def has_format(text: str | None) -> bool:
    """Whether `text` is a JSON object with the task's keys, in order (the format, whatever the values)."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return False
    return isinstance(value, dict) and list(value) == ["name", "age", "city"]
