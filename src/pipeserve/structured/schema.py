"""JSON Schema helpers for constrained output: the checks a schema passes, reference resolution, and the
shortest valid value (from the analysis in `instances`)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from pipeserve.errors import InvalidRequestError
from pipeserve.structured.instances import FORMAT_SAMPLES, TOO_BIG, Found, Instances, Unresolvable, shortest_match

Schema = dict[str, Any]


def check_schema(schema: Any, *, param: str) -> Schema:
    """A 400 naming `param` unless `schema` is a valid JSON Schema (draft 2020-12) with a finite valid value."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param} must be a JSON Schema object.", param=param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidRequestError(f"Invalid schema in {param} at {where}: {exc.message}", param=param) from None
    except RecursionError:  # the request body's depth limit should come first; this is the net under it
        raise InvalidRequestError(
            f'{param} is nested too deeply to check. Flatten it: name repeated parts under "$defs" and refer '
            'to them with "$ref".',
            param=param,
        ) from None
    check_satisfiable(schema, param=param)
    return schema


def check_satisfiable(schema: Schema, *, param: str) -> None:
    """A 400 naming `param` when no finite JSON value is valid against `schema` (or a `$ref` in it points
    nowhere): such a schema would make a constrained decode end at once with nothing valid to show."""
    try:
        instances = Instances(schema)
        instances.check_references()
        result = instances.find(schema)
    except Unresolvable as exc:
        raise InvalidRequestError(
            f'{param} has "$ref": "{exc.ref}" (at {_pointer(exc.where)}), which points to nothing in the schema. '
            'Define what it names (under "$defs", say) or correct the reference.',
            param=param,
        ) from None
    if result is None or isinstance(result, Found):
        return
    raise InvalidRequestError(
        f"{param} can't be satisfied by any finite JSON value: {result.problem} (at {_pointer(result.where)}). "
        f"{result.hint}",
        param=param,
    )


def _pointer(where: str) -> str:
    return "#" + where


class NoValue(Exception):
    """No valid value is known to close with: the schema has none, or it is too long to be worth writing."""


class SchemaView:
    """A schema together with the root it resolves `$ref`s against.

    Results are cached per schema object, so the dicts built by merging are the same objects each time they
    are asked for (and the analysis of each is done once)."""

    def __init__(self, root: Schema) -> None:
        self.root = root
        self.instances = Instances(root)
        self._resolved: dict[int, tuple[Any, Schema]] = {}
        self._branches: dict[int, tuple[Schema, list[Schema]]] = {}

    def resolve(self, schema: Any) -> Schema:
        if not isinstance(schema, dict):
            return _EVERYTHING if schema is True or schema is None else _NOTHING
        cached = self._resolved.get(id(schema))
        if cached is None:
            # The input is kept with its result, so that its id is not reused while the entry lives.
            cached = self._resolved[id(schema)] = (schema, self._merge(schema, 0))
        return cached[1]

    def _merge(self, schema: Schema, depth: int) -> Schema:
        if "$ref" in schema and depth < 32:
            target = self._pointer(schema["$ref"])
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return self._merge(merged, depth + 1)
        if "allOf" in schema and depth < 32:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._merge(part, depth + 1) if isinstance(part, dict) else self.resolve(part)
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
        cached = self._branches.get(id(schema))
        if cached is None:
            cached = self._branches[id(schema)] = (schema, self._split(schema))
        return cached[1]

    def _split(self, schema: Schema) -> list[Schema]:
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
        return self.resolve(extra) if isinstance(extra, dict) else _EVERYTHING

    def item(self, schema: Schema, index: int) -> Schema:
        schema = self.resolve(schema)
        prefix = schema.get("prefixItems", [])
        if index < len(prefix):
            return self.resolve(prefix[index])
        items = schema.get("items", {})
        return self.resolve(items) if isinstance(items, dict) else _EVERYTHING

    # --- the shortest valid value ------------------------------------------------------------------------
    def minimal(self, schema: Schema) -> Any:
        """A shortest valid value of `schema` (a part of the root); NoValue when none is known."""
        try:
            result = self.instances.find(schema)
        except Unresolvable:
            raise NoValue from None
        if not isinstance(result, Found) or result.value is TOO_BIG:
            raise NoValue
        return result.value


_EVERYTHING: Schema = {}
_NOTHING: Schema = {"not": {}}


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
        sample = FORMAT_SAMPLES[fmt]
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
