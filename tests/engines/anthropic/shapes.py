"""Checks a request body against the `anthropic` SDK's TypedDicts, strictly: required keys present, no key the
SDK does not know, literals and scalar types as declared, recursively."""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from anthropic.types.message_create_params import MessageCreateParamsStreaming
from typing_extensions import is_typeddict

# Sampling fields of the Messages API that SDK 2.x no longer declares (newer models refuse them); older
# models take them, so pipeserve sends them when a client sets them.
SAMPLING_FIELDS = {"temperature", "top_p"}


def check_request(body: dict[str, Any]) -> None:
    """Raise AssertionError where `body` departs from `MessageCreateParamsStreaming`."""
    problems = _check({k: v for k, v in body.items() if k not in SAMPLING_FIELDS}, MessageCreateParamsStreaming, "")
    assert not problems, "\n".join(problems)


def _check(value: Any, annotation: Any, path: str) -> list[str]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return []
    if origin in (typing.Annotated, typing.Required, typing.NotRequired):
        return _check(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        attempts = [_check(value, alternative, path) for alternative in args]
        if any(not problems for problems in attempts):
            return []
        best = min(attempts, key=len)
        return best if len(args) == 1 else [f"{path}: matches none of {len(args)} alternatives; closest: {best}"]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if annotation is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if is_typeddict(annotation):
        return _check_typeddict(value, annotation, path)
    if annotation in (str, int, float, bool):
        ok = isinstance(value, annotation) and not (annotation is not bool and isinstance(value, bool))
        if annotation is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a {annotation.__name__}"]
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        item = args[1] if len(args) == 2 else Any
        return [p for k, v in value.items() for p in _check(v, item, f"{path}.{k}")]
    if origin is not None and isinstance(origin, type) and issubclass(origin, collections.abc.Iterable):
        return _check_list(value, args[0] if args else Any, path)
    if origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr":
        return _check_list(value, args[0], path)
    if isinstance(annotation, type) and isinstance(value, annotation):
        return []
    return [f"{path}: cannot check against {annotation!r}"]


def _check_list(value: Any, item: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{path}: expected an array"]
    return [p for i, v in enumerate(value) for p in _check(v, item, f"{path}[{i}]")]


def _check_typeddict(value: Any, annotation: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({annotation.__name__})"]
    hints = typing.get_type_hints(annotation, include_extras=True)
    # The SDK's modules postpone annotations, which hides `Required[...]` from `__required_keys__`.
    required = {k for k, hint in hints.items() if typing.get_origin(hint) is typing.Required}
    required |= annotation.__required_keys__
    problems = [f"{path}: missing {key!r}" for key in sorted(required) if key not in value]
    for key, item in value.items():
        if key not in hints:
            extra = getattr(annotation, "__pydantic_config__", {}).get("extra") == "allow"
            if not extra:
                problems.append(f"{path}: {key!r} is not a field of {annotation.__name__}")
            continue
        problems += _check(item, hints[key], f"{path}.{key}")
    return problems
