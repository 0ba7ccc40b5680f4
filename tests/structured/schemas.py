"""Random JSON schemas (nested objects, arrays, enums, required fields, numbers) and values valid under them."""

from __future__ import annotations

import random
import string
from typing import Any

WORDS = ["alpha", "beta", "gamma", "delta", "red", "green", "blue", "north", "south", "yes", "no"]


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kinds = ["string", "integer", "number", "boolean", "enum", "null"]
    if depth < 3:
        kinds += ["object", "object", "array"]
    kind = rng.choice(kinds)
    if kind == "object":
        names = rng.sample(
            ["name", "age", "city", "tags", "score", "items", "kind", "ok", "note", "id"], rng.randint(1, 4)
        )
        properties = {name: random_schema(rng, depth + 1) for name in names}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        schema["required"] = [n for n in names if rng.random() < 0.7]
        if rng.random() < 0.5:
            schema["additionalProperties"] = False
        return schema
    if kind == "array":
        schema = {"type": "array", "items": random_schema(rng, depth + 1)}
        if rng.random() < 0.5:
            schema["minItems"] = rng.randint(0, 2)
        if rng.random() < 0.3:
            schema["maxItems"] = schema.get("minItems", 0) + rng.randint(1, 3)
        return schema
    if kind == "string":
        schema = {"type": "string"}
        roll = rng.random()
        if roll < 0.2:
            schema["minLength"] = rng.randint(1, 4)
        elif roll < 0.35:
            schema["maxLength"] = rng.randint(3, 12)
        elif roll < 0.45:
            schema["pattern"] = "^[a-z]{3}[0-9]{2}$"
        elif roll < 0.55:
            schema["format"] = rng.choice(["date", "email"])
        return schema
    if kind in ("integer", "number"):
        schema = {"type": kind}
        if rng.random() < 0.5:
            schema["minimum"] = rng.randint(-50, 50)
            if rng.random() < 0.5:
                schema["maximum"] = schema["minimum"] + rng.randint(0, 1000)
        return schema
    if kind == "enum":
        return {"enum": rng.sample(WORDS, rng.randint(1, 4))}
    return {"type": kind}


def random_value(rng: random.Random, schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        keys = [k for k in schema["properties"] if k in schema.get("required", []) or rng.random() < 0.5]
        return {k: random_value(rng, schema["properties"][k]) for k in keys}
    if kind == "array":
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", low + 3)
        return [random_value(rng, schema["items"]) for _ in range(rng.randint(low, max(low, high)))]
    if kind == "string":
        if schema.get("pattern"):
            return "".join(rng.choices(string.ascii_lowercase, k=3)) + "".join(rng.choices(string.digits, k=2))
        if schema.get("format") == "date":
            return f"20{rng.randint(10, 29)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        if schema.get("format") == "email":
            return rng.choice(WORDS) + "@example.org"
        size = rng.randint(schema.get("minLength", 0), min(schema.get("maxLength", 12), 12))
        return "".join(rng.choices(string.ascii_letters + ' é"\\', k=size))
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", -1000), schema.get("maximum", 1000)
        value = rng.randint(int(low), int(high))
        return value if kind == "integer" else value + rng.choice([0, 0.25, 0.5])
    if kind == "boolean":
        return rng.random() < 0.5
    return None
