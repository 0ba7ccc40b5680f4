"""Closing a JSON document that the token budget cut short, so that it still validates.

`JsonCloser` follows the text generated so far (character by character, as a JSON parser would) and
knows, at every point, the shortest text that completes the document into a value valid against the
schema: the open string closed, missing required properties filled with their shortest valid values,
arrays padded to `minItems`, every container closed. The engine reserves that many tokens and, when the
budget runs out, emits them instead of more sampled tokens. Shortest values come from the fixpoint analysis
in `instances`, so a recursive schema closes with its shortest finite value, never an endless one.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from pipeserve.structured.schema import NoValue, Schema, SchemaView, string_completion

_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_SEP_ITEM, _SEP_KEY = ", ", ": "
_MAX_CHUNKS = 1_000  # pieces of one closing (a member, an item, a bracket...); more is not worth writing


@dataclass
class _Obj:
    schema: Schema
    keys: list[str] = field(default_factory=list)
    state: str = "key_or_end"  # key_or_end | key | colon | value | comma_or_end
    key: str = ""
    spaced: bool = False  # whitespace came after the colon: the value needs none before it


@dataclass
class _Arr:
    schema: Schema
    count: int = 0
    state: str = "value_or_end"  # value_or_end | value | comma_or_end


@dataclass
class _Str:
    schema: Schema
    is_key: bool
    text: str = ""
    escape: int = 0  # 0: none, 1: after a backslash, 2..5: hex digits of \\u still to come


@dataclass
class _Num:
    text: str


@dataclass
class _Lit:
    target: str
    pos: int


class JsonCloser:
    def __init__(self, schema: Schema) -> None:
        self.view = SchemaView(schema)
        self.root = schema
        self.stack: list[_Obj | _Arr | _Str | _Num | _Lit] = []
        self.done = False
        self.broken = False  # text that is no JSON: nothing sensible to close

    def clone(self) -> JsonCloser:
        twin = copy.copy(self)
        twin.stack = [copy.copy(frame) for frame in self.stack]
        for frame in twin.stack:
            if isinstance(frame, _Obj):
                frame.keys = list(frame.keys)
        return twin

    # --- following the text ---------------------------------------------------------------------------
    def feed(self, text: str) -> JsonCloser:
        for char in text:
            if self.broken:
                break
            self._char(char)
        return self

    def _char(self, char: str) -> None:
        top = self.stack[-1] if self.stack else None
        if isinstance(top, _Str):
            self._string_char(top, char)
        elif isinstance(top, _Num):
            if char in "0123456789+-.eE":
                top.text += char
            else:
                self.stack.pop()
                self._value_done()
                self._char(char)
        elif isinstance(top, _Lit):
            top.pos += 1
            if top.pos >= len(top.target):
                self.stack.pop()
                self._value_done()
        elif char in _WS:
            if isinstance(top, _Obj) and top.state == "value":
                top.spaced = True
        elif isinstance(top, _Obj):
            self._object_char(top, char)
        elif isinstance(top, _Arr):
            self._array_char(top, char)
        elif not self.done:
            self._start_value(char, self.root)
        else:
            self.broken = True

    def _string_char(self, frame: _Str, char: str) -> None:
        if frame.escape == 1:
            frame.escape = 5 if char == "u" else 0
            frame.text += {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(char, char)
        elif frame.escape > 1:
            frame.escape = frame.escape - 1 if frame.escape > 2 else 0
        elif char == "\\":
            frame.escape = 1
        elif char == '"':
            self.stack.pop()
            if frame.is_key:
                parent = self.stack[-1]
                assert isinstance(parent, _Obj)
                parent.key, parent.state = frame.text, "colon"
            else:
                self._value_done()
        else:
            frame.text += char

    def _object_char(self, frame: _Obj, char: str) -> None:
        if frame.state in ("key_or_end", "key") and char == '"':
            self.stack.append(_Str({}, is_key=True))
        elif frame.state in ("key_or_end", "comma_or_end") and char == "}":
            self.stack.pop()
            self._value_done()
        elif frame.state == "colon" and char == ":":
            frame.state, frame.spaced = "value", False
        elif frame.state == "value":
            frame.keys.append(frame.key)
            self._start_value(char, self.view.property(frame.schema, frame.key))
        elif frame.state == "comma_or_end" and char == ",":
            frame.state = "key"
        else:
            self.broken = True

    def _array_char(self, frame: _Arr, char: str) -> None:
        if frame.state in ("value_or_end", "comma_or_end") and char == "]":
            self.stack.pop()
            self._value_done()
        elif frame.state == "comma_or_end" and char == ",":
            frame.state = "value"
        elif frame.state in ("value_or_end", "value"):
            self._start_value(char, self.view.item(frame.schema, frame.count))
        else:
            self.broken = True

    def _start_value(self, char: str, schema: Schema) -> None:
        opened: _Obj | _Arr | _Str | _Num | _Lit
        if char == "{":
            opened = _Obj(self._branch(schema, "object"))
        elif char == "[":
            opened = _Arr(self._branch(schema, "array"))
        elif char == '"':
            opened = _Str(self._branch(schema, "string"), is_key=False)
        elif char == "-" or char.isdigit():
            opened = _Num(char)
        elif char in "tfn":
            opened = _Lit({"t": "true", "f": "false", "n": "null"}[char], 1)
        else:
            self.broken = True
            return
        self._mark_in_value()
        self.stack.append(opened)

    def _mark_in_value(self) -> None:
        parent = self.stack[-1] if self.stack else None
        if isinstance(parent, _Obj | _Arr):
            parent.state = "in_value"

    def _branch(self, schema: Schema, kind: str) -> Schema:
        """The anyOf/oneOf branch a value of JSON type `kind` takes (the first that allows it)."""
        for branch in self.view.branches(schema):
            allowed = branch.get("type")
            if allowed is None or allowed == kind or (isinstance(allowed, list) and kind in allowed):
                return branch
        return self.view.resolve(schema)

    def _value_done(self) -> None:
        parent = self.stack[-1] if self.stack else None
        if isinstance(parent, _Obj):
            parent.state = "comma_or_end"
        elif isinstance(parent, _Arr):
            parent.count += 1
            parent.state = "comma_or_end"
        else:
            self.done = True

    # --- closing ------------------------------------------------------------------------------------------
    def closing(self) -> str | None:
        """The shortest text found that completes the document validly ("" once it is complete), or None
        when no valid completion is known (a value the schema requires is too long to write out, say)."""
        if self.broken or self.done:
            return ""
        twin = self.clone()
        out: list[str] = []
        try:
            for _ in range(_MAX_CHUNKS):
                if twin.done or twin.broken:
                    return "".join(out)
                chunk = twin._next_chunk()
                if chunk is None:  # a number that is already complete: it ends without a character
                    twin.stack.pop()
                    twin._value_done()
                    continue
                out.append(chunk)
                twin.feed(chunk)
        except NoValue:
            pass
        return None

    def _next_chunk(self) -> str | None:
        if not self.stack:
            return self._dump(self.view.minimal(self.root))
        top = self.stack[-1]
        if isinstance(top, _Str):
            return self._close_string(top)
        if isinstance(top, _Num):
            return self._close_number(top)
        if isinstance(top, _Lit):
            return top.target[top.pos :]
        if isinstance(top, _Obj):
            return self._close_object(top)
        return self._close_array(top)

    def _close_number(self, frame: _Num) -> str | None:
        if not _NUMBER.fullmatch(frame.text):
            return "0"
        parent = self.stack[-2] if len(self.stack) > 1 else None
        if isinstance(parent, _Obj):
            schema = self.view.property(parent.schema, parent.key)
        elif isinstance(parent, _Arr):
            schema = self.view.item(parent.schema, parent.count)
        else:
            schema = self.view.resolve(self.root)
        value = float(frame.text)
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        # A prefix like "4" of "42" under minimum 18: more digits make it big enough.
        if low is not None and 0 < value < low and "." not in frame.text and "e" not in frame.text.lower():
            return "0"
        return None

    def _close_string(self, frame: _Str) -> str:
        fix = "n" if frame.escape == 1 else "0" * max(frame.escape - 1, 0)
        if frame.is_key:
            parent = self.stack[-2]
            assert isinstance(parent, _Obj)
            rest = self._key_completion(parent, frame.text)
            return fix + _escape(rest) + '"'
        schema = frame.schema
        choices = [v for v in schema.get("enum", []) if isinstance(v, str) and v.startswith(frame.text)]
        if isinstance(schema.get("const"), str) and schema["const"].startswith(frame.text):
            choices = [schema["const"]]
        if choices:
            return fix + _escape(str(min(choices, key=len))[len(frame.text) :]) + '"'
        tail = string_completion(frame.text, schema)
        padding = max(schema.get("minLength", 0) - len(frame.text) - len(tail), 0)
        return fix + _escape(tail) + "a" * int(padding) + '"'

    def _key_completion(self, frame: _Obj, prefix: str) -> str:
        schema = self.view.resolve(frame.schema)
        names = [*schema.get("required", []), *schema.get("properties", {})]
        for name in map(str, names):
            if name.startswith(prefix) and name not in frame.keys:
                return name[len(prefix) :]
        if schema.get("additionalProperties", True) is not False and prefix not in frame.keys:
            return ""
        suffix = "_"
        while prefix + suffix in frame.keys:
            suffix += "_"
        return suffix

    def _close_object(self, frame: _Obj) -> str:
        schema = self.view.resolve(frame.schema)
        missing = [key for key in schema.get("required", []) if key not in frame.keys]
        if frame.state == "colon":
            return _SEP_KEY.strip()
        if frame.state == "value":
            lead = "" if frame.spaced else " "
            return lead + self._dump(self.view.minimal(self.view.property(schema, frame.key)))
        if frame.state == "key":
            key = missing[0] if missing else self._spare_key(frame, schema)
            return self._member(schema, key)
        if not missing and len(frame.keys) < schema.get("minProperties", 0):
            missing = [self._spare_key(frame, schema)]
        if missing:
            lead = _SEP_ITEM if frame.state == "comma_or_end" else ""
            return lead + self._member(schema, missing[0])
        return "}"

    def _spare_key(self, frame: _Obj, schema: Schema) -> str:
        for name in schema.get("properties", {}):
            if name not in frame.keys:
                return str(name)
        return "k" + self._key_completion(frame, "k")

    def _member(self, schema: Schema, key: str) -> str:
        return self._dump(key) + _SEP_KEY + self._dump(self.view.minimal(self.view.property(schema, key)))

    def _close_array(self, frame: _Arr) -> str:
        schema = self.view.resolve(frame.schema)
        missing = schema.get("minItems", 0) - frame.count
        if missing > _MAX_CHUNKS:
            raise NoValue
        if frame.state == "value" or missing > 0:
            lead = _SEP_ITEM if frame.state == "comma_or_end" else ""
            return lead + self._dump(self.view.minimal(self.view.item(schema, frame.count)))
        return "]"

    @staticmethod
    def _dump(value: object) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(_SEP_ITEM, _SEP_KEY))


def _escape(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]
