"""JSON Schema helpers for constrained output: reference resolution and the shortest valid value."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import jsonschema

from pipeserve.errors import InvalidRequestError

Schema = dict[str, Any]

# Shortest-first preference when a schema allows several types.
_TYPE_ORDER = ("integer", "number", "string", "null", "boolean", "array", "object")
_FORMAT_SAMPLES = {
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "email": "a@example.com",
    "uri": "http://a",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "0.0.0.0",
    "ipv6": "::",
    "hostname": "a",
}


def check_schema(schema: Any, *, param: str) -> Schema:
    """A 400 naming `param` unless `schema` is a valid JSON Schema (draft 2020-12)."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param} must be a JSON Schema object.", param=param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidRequestError(f"Invalid schema in {param} at {where}: {exc.message}", param=param) from None
    return schema


class SchemaView:
    """A schema together with the root it resolves `$ref`s against."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, schema: Any, depth: int = 0) -> Schema:
        if not isinstance(schema, dict):
            return {} if schema is True or schema is None else {"not": {}}
        if "$ref" in schema and depth < 32:
            target = self._pointer(schema["$ref"])
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.resolve(merged, depth + 1)
        if "allOf" in schema and depth < 32:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part, depth + 1)
                for key, value in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **value}
                    elif key == "required":
                        merged["required"] = [*merged.get("required", []), *value]
                    else:
                        merged.setdefault(key, value)
            return merged
        return schema

    def _pointer(self, ref: str) -> Schema:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    # --- navigation --------------------------------------------------------------------------------------
    def branches(self, schema: Schema) -> list[Schema]:
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf")
        if not options:
            return [schema]
        base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        return [self.resolve({**base, **self.resolve(option)}) for option in options]

    def property(self, schema: Schema, key: str) -> Schema:
        schema = self.resolve(schema)
        properties = schema.get("properties", {})
        if key in properties:
            return self.resolve(properties[key])
        for pattern, sub in schema.get("patternProperties", {}).items():
            if re.search(pattern, key):
                return self.resolve(sub)
        extra = schema.get("additionalProperties", True)
        return self.resolve(extra) if isinstance(extra, dict) else {}

    def item(self, schema: Schema, index: int) -> Schema:
        schema = self.resolve(schema)
        prefix = schema.get("prefixItems", [])
        if index < len(prefix):
            return self.resolve(prefix[index])
        items = schema.get("items", {})
        return self.resolve(items) if isinstance(items, dict) else {}

    # --- the shortest valid value ------------------------------------------------------------------------
    def minimal(self, schema: Schema, depth: int = 0) -> Any:
        schema = self.branches(schema)[0]
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return min(schema["enum"], key=lambda v: len(json.dumps(v)))
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = min(kind, key=lambda t: _TYPE_ORDER.index(t) if t in _TYPE_ORDER else 99) if kind else None
        if kind is None:
            kind = self._implied_type(schema)
        if depth > 24:
            return None
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "string":
            return _string(schema)
        if kind == "boolean":
            return False
        if kind == "array":
            count = schema.get("minItems", 0)
            return [self.minimal(self.item(schema, i), depth + 1) for i in range(count)]
        if kind == "object":
            keys = list(schema.get("required", []))
            spare = [k for k in schema.get("properties", {}) if k not in keys]
            while len(keys) < schema.get("minProperties", 0):
                keys.append(spare.pop(0) if spare else f"k{len(keys)}")
            return {key: self.minimal(self.property(schema, key), depth + 1) for key in keys}
        return None

    @staticmethod
    def _implied_type(schema: Schema) -> str | None:
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if "minLength" in schema or "pattern" in schema or "format" in schema:
            return "string"
        if "minimum" in schema or "maximum" in schema:
            return "number"
        return None


def _number(schema: Schema, *, integer: bool) -> int | float:
    low = schema.get("minimum")
    if "exclusiveMinimum" in schema:
        bound = schema["exclusiveMinimum"]
        low = (math.floor(bound) + 1 if integer else bound + 1) if low is None or bound >= low else low
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:
        bound = schema["exclusiveMaximum"]
        high = (math.ceil(bound) - 1 if integer else bound - 1) if high is None or bound <= high else high
    value: int | float = 0
    if low is not None and value < low:
        value = math.ceil(low) if integer else low
    if high is not None and value > high:
        value = math.floor(high) if integer else high
    step = schema.get("multipleOf")
    if step and value % step:
        value = math.ceil(value / step) * step
    return int(value) if integer else value


def _string(schema: Schema) -> str:
    size = schema.get("minLength", 0)
    if schema.get("format") in _FORMAT_SAMPLES:
        return _FORMAT_SAMPLES[str(schema["format"])]
    pattern = schema.get("pattern")
    if pattern:
        sample = shortest_match(pattern)
        if sample is not None and len(sample) >= size:
            return sample
    return "a" * int(size)


# Regexes for the string formats whose truncated values the closer completes.
FORMAT_PATTERNS = {
    "date-time": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "time": r"^\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$",
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "ipv4": r"^\d{1,3}(\.\d{1,3}){3}$",
}


def string_completion(prefix: str, schema: Schema) -> str:
    """A short suffix that makes a truncated string satisfy its schema's pattern or format."""
    if schema.get("pattern"):
        return complete_to_pattern(prefix, schema["pattern"])
    fmt = schema.get("format")
    if fmt in FORMAT_PATTERNS:
        pattern = FORMAT_PATTERNS[fmt]
        if re.search(pattern, prefix):
            return ""
        sample = _FORMAT_SAMPLES[fmt]
        for start in range(len(sample) + 1):
            if re.search(pattern, prefix + sample[start:]):
                return sample[start:]
    return ""


def complete_to_pattern(prefix: str, pattern: str) -> str:
    """A short suffix that makes `prefix` match `pattern` (best effort: the tails of the shortest match)."""
    if re.search(pattern, prefix):
        return ""
    sample = shortest_match(pattern) or ""
    for start in range(len(sample) + 1):
        if re.search(pattern, prefix + sample[start:]):
            return sample[start:]
    return ""


def shortest_match(pattern: str) -> str | None:
    """The shortest string the regex matches, built from its parse tree; None for what this can't follow."""
    import re._parser as sre  # the stdlib's own regex parser: no third-party regex sampler needed

    try:
        return _sample(sre.parse(pattern))
    except Exception:
        return None


def _sample(nodes: Any) -> str:
    import re._constants as c

    out = []
    for op, arg in nodes:
        if op is c.LITERAL:
            out.append(chr(arg))
        elif op is c.ANY:
            out.append("a")
        elif op is c.IN:
            out.append(_sample_class(arg))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, _high, sub = arg
            out.append(_sample(sub) * low)
        elif op is c.SUBPATTERN:
            out.append(_sample(arg[-1]))
        elif op is c.BRANCH:
            out.append(min((_sample(branch) for branch in arg[1]), key=len))
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            continue
        elif op is c.CATEGORY:
            out.append(_CATEGORY_SAMPLES.get(str(arg), "a"))
        else:
            raise ValueError(f"unsupported regex construct {op}")
    return "".join(out)


def _sample_class(items: Any) -> str:
    import re._constants as c

    for op, arg in items:
        if op is c.NEGATE:
            break
        if op is c.LITERAL:
            return chr(arg)
        if op is c.RANGE:
            return chr(arg[0])
        if op is c.CATEGORY:
            return _CATEGORY_SAMPLES.get(str(arg), "a")
    # a negated class: a character outside the usual excluded sets
    return "a" if all(not (op is c.LITERAL and arg == ord("a")) for op, arg in items) else "b"


_CATEGORY_SAMPLES = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_WORD": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_NOT_SPACE": "a",
}
