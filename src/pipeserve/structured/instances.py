"""Whether a JSON schema has a finite valid value, a short one when it has, and why not when it hasn't.

A schema can refer to itself through `$ref`, so "has a valid value" is recursive: `{"$ref": "#"}`, or an
object that requires a property of its own type, is satisfied by no finite document, yet a validator only
finds that out by recursing forever, and llguidance compiles it into a grammar that matches nothing (a
constrained decode then ends at once, empty). As for the productive symbols of a grammar, the answer is a
least fixpoint: a schema has a value once the parts that must hold values (the required properties, the
first `minItems` items, one branch of each `anyOf`) are known to have one. Evaluation starts from "no
value" for anything still being evaluated (a cycle) and is repeated until nothing changes; each value found
on the way is built from values already found, so it is finite and valid.

The analysis works on conjunctions of schema nodes — what `allOf`, a `$ref` beside other keywords and the
branch taken in each `anyOf` amount to — and errs one way only: what it does not model (`if`/`then`,
`dependentSchemas`, `uniqueItems`, `contains`, formats, how several patterns combine, `oneOf`'s
exclusivity) it ignores, so a schema it rejects truly has no finite valid value, while one it accepts may
still be refused by llguidance. Work and depth are bounded; past the bounds it gives up and rejects
nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeGuard
from urllib.parse import unquote

Atom = tuple[int, int]  # (id of a schema node, stage: how much of the node is still to expand)
Key = frozenset[Atom]

# A node is expanded in stages: first `$ref` and `allOf` (conjunctions), then `anyOf`, then `oneOf`
# (disjunctions); at the last stage only its own keywords are left.
_STAGES: tuple[tuple[str, ...], ...] = (("$ref", "allOf"), ("anyOf",), ("oneOf",))
_LOCAL = len(_STAGES)
_FALSE: Atom = (0, -1)

# Keywords that restrict values; a node with none of them left accepts everything and is dropped.
_CONSTRAINTS = frozenset(
    {
        "type", "enum", "const", "not",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "pattern",
        "items", "prefixItems", "minItems", "maxItems", "contains",
        "properties", "patternProperties", "additionalProperties", "required", "dependentRequired",
        "minProperties", "maxProperties", "propertyNames",
    }
)  # fmt: skip
_ANNOTATIONS = frozenset(
    {"title", "description", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly", "$defs",
     "definitions", "$schema", "$id", "$anchor", "format", "contentEncoding", "contentMediaType"}
)  # fmt: skip

_KINDS = ("integer", "number", "string", "null", "boolean", "array", "object")  # shortest first
_TYPE_KINDS = {
    "integer": {"integer"},
    "number": {"integer", "number"},
    "string": {"string"},
    "null": {"null"},
    "boolean": {"boolean"},
    "array": {"array"},
    "object": {"object"},
}
FORMAT_SAMPLES = {
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

_MAX_DEPTH = 80  # nested evaluations (about 6 Python frames each), well inside the interpreter's limit
_MAX_WORK = 4_000  # evaluations per analysis (under 0.1 s); beyond it, nothing is rejected
_MAX_SIZE = 20_000  # characters of a value worth writing out; larger ones are known to exist, not built
_MAX_BRANCHES = 64  # branches of one anyOf/oneOf explored
_MAX_CHECK_DEPTH = 24  # nested schemas when checking an enum value; deeper is not held against it
_MAX_CHECKS = 2_000  # schemas visited when checking one enum value


class _GiveUp(Exception):
    pass


class _TooBig:
    """Stands for a value that exists but is too long to be worth building (`minItems: 100000`)."""

    def __repr__(self) -> str:
        return "<too big>"


TOO_BIG = _TooBig()

_HINT_CYCLE = (
    'Give the recursion a way out: leave the recursive property out of "required", allow an empty array '
    '("minItems": 0), or add an "anyOf" branch that does not recurse, such as {"type": "null"}.'
)


@dataclass(frozen=True, slots=True)
class Found:
    value: Any  # TOO_BIG when `size` is past _MAX_SIZE
    size: int  # characters of its JSON text


@dataclass(frozen=True, slots=True)
class Missing:
    problem: str  # what makes every value invalid, as a sentence fragment
    hint: str  # what to change
    where: str = ""  # JSON pointer of the node at fault
    cycle: bool = False  # a recursion with no way out, its `$ref` not located yet


Result = Found | Missing


class Unresolvable(Exception):
    """A local `$ref` that points nowhere in the schema."""

    def __init__(self, ref: str, where: str) -> None:
        super().__init__(ref)
        self.ref, self.where = ref, where


class Instances:
    """The analysis of one schema document; results are kept, so asking again about a part is cheap."""

    def __init__(self, root: Any, *, max_work: int = _MAX_WORK) -> None:
        self.root = root
        self._nodes: dict[int, Any] = {}
        self._paths: dict[int, str] = {}
        self._anchors: dict[str, Any] = {}
        self._nested_ids = False
        self._index(root)
        self._final: dict[Key, Result] = {}
        self._approx: dict[Key, Result] = {}
        self._pass: dict[Key, Result] = {}
        self._stack: set[Key] = set()
        self._assumed: set[Key] = set()
        self._work = 0
        self._max_work = max_work
        self._checks = 0  # work of the current `_valid`

    # --- public ------------------------------------------------------------------------------------------
    def find(self, schema: Any) -> Result | None:
        """A short valid value of `schema` (a node of this document, or a dict built from its nodes), why
        there is none, or None when the analysis gave up (too much work, too deep)."""
        try:
            key = self._key([schema])
            if key in self._final:
                return self._final[key]
            while True:
                self._pass, self._stack, self._assumed = {}, set(), set()
                result = self._get(key, 0)
                # Another round while something assumed to have no value (a cycle) turned out to have one.
                changed = any(
                    isinstance(self._pass.get(k), Found) and not isinstance(self._approx.get(k), Found)
                    for k in self._assumed
                )
                self._approx.update(self._pass)
                if not changed:
                    self._final.update(self._pass)
                    return result
        except (_GiveUp, RecursionError, ArithmeticError):  # numbers past what floats hold: not judged
            return None
        finally:
            self._pass, self._stack, self._assumed = {}, set(), set()

    def path(self, node: Any) -> str:
        return self._paths.get(id(node), "")

    # --- the document --------------------------------------------------------------------------------------
    def _index(self, root: Any) -> None:
        """Paths of every subschema (for messages), `$anchor`s, and whether nested `$id`s change ref bases."""
        todo: list[tuple[Any, str]] = [(root, "")]
        while todo:
            node, path = todo.pop()
            if not isinstance(node, dict) or id(node) in self._paths:
                continue
            self._paths[id(node)] = path
            self._nodes[id(node)] = node
            if isinstance(node.get("$anchor"), str):
                self._anchors.setdefault(node["$anchor"], node)
            if node is not root and isinstance(node.get("$id"), str):
                self._nested_ids = True
            todo.extend((sub, path + "".join("/" + _escape(step) for step in steps)) for steps, sub in subschemas(node))

    def check_references(self) -> None:
        """Unresolvable if a local `$ref` anywhere in the document points nowhere, reached or not."""
        for node_id in list(self._paths):
            node = self._nodes[node_id]
            if "$ref" in node:
                self._resolve(node["$ref"], node)

    def _resolve(self, ref: Any, holder: dict[str, Any]) -> Any:
        """The node a `$ref` names; True (no constraint known) for references this analysis can't follow."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return True
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            target = self._anchors.get(fragment)
        else:
            target = self.root
            for part in fragment.split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    target = None
                    break
        if target is None or not isinstance(target, dict | bool):
            if self._nested_ids:  # the reference may be relative to a nested $id: not ours to judge
                return True
            raise Unresolvable(ref, self.path(holder))
        return target

    # --- keys ------------------------------------------------------------------------------------------------
    def _key(self, schemas: Iterable[Any]) -> Key:
        atoms: set[Atom] = set()
        for schema in schemas:
            atom = self._atom(schema)
            if atom is not None:
                atoms.add(atom)
        return frozenset(atoms)

    def _atom(self, schema: Any, stage: int = 0) -> Atom | None:
        if schema is False:
            return _FALSE
        if not isinstance(schema, dict):
            return None
        self._nodes.setdefault(id(schema), schema)  # keeps dicts built by callers alive while their id is used
        while stage < _LOCAL and not any(word in schema for word in _STAGES[stage]):
            stage += 1
        if stage == _LOCAL and not any(word in schema for word in _CONSTRAINTS):
            return None
        return (id(schema), stage)

    # --- the fixpoint ------------------------------------------------------------------------------------------
    def _get(self, key: Key, depth: int) -> Result:
        if key in self._final:
            return self._final[key]
        if key in self._pass:
            return self._pass[key]
        if key in self._stack:
            self._assumed.add(key)
            return self._approx.get(key) or Missing("", _HINT_CYCLE, cycle=True)
        if depth > _MAX_DEPTH:
            raise _GiveUp
        if self._work >= self._max_work:
            raise _GiveUp
        self._work += 1
        self._stack.add(key)
        try:
            result = self._evaluate(key, depth)
        finally:
            self._stack.discard(key)
        self._pass[key] = result
        return result

    def _evaluate(self, key: Key, depth: int) -> Result:
        if not key:  # no constraint at all
            return Found(None, 4)
        if _FALSE in key:
            return Missing("the schema is `false`, which no value satisfies", "Replace `false` with a schema.")
        atoms = sorted(key)
        nodes = [self._nodes[node_id] for node_id, _ in atoms]
        typed = [node for node in nodes if "type" in node]
        if typed and not set.intersection(*(_type_kinds(node["type"]) for node in typed)):
            # Every node's own "type" holds whatever its branches say: no need to explore them.
            return Missing(
                '"type" allows no type here (the types asked for where schemas meet don\'t overlap)',
                'Make the "type" keywords that apply here agree.',
                self.path(typed[-1]),
            )
        for node_id, stage in atoms:
            if stage != 0:
                continue
            node = self._nodes[node_id]
            parts: list[Any] = []
            if "$ref" in node:
                parts.append(self._resolve(node["$ref"], node))
            all_of = node.get("allOf")
            if isinstance(all_of, list):
                parts.extend(all_of)
            result = self._get(self._swap(key, (node_id, stage), parts), depth + 1)
            if isinstance(result, Missing) and result.cycle and not result.where and "$ref" in node:
                problem = (
                    f'"$ref": {json.dumps(node["$ref"])} makes the schema contain itself, and every value of '
                    "it would need another one inside"
                )
                result = replace(result, problem=problem, where=self.path(node), cycle=False)
            return result
        for node_id, stage in atoms:
            if stage == _LOCAL:
                continue
            node = self._nodes[node_id]
            word = _STAGES[stage][0]
            branches = node.get(word)
            if not isinstance(branches, list) or not branches:
                return self._get(self._swap(key, (node_id, stage), []), depth + 1)
            best: Found | None = None
            failed: Missing | None = None
            for branch in branches[:_MAX_BRANCHES]:
                result = self._get(self._swap(key, (node_id, stage), [branch]), depth + 1)
                if isinstance(result, Found):
                    if best is None or result.size < best.size:
                        best = result
                elif failed is None:
                    failed = result
            if best is not None or len(branches) > _MAX_BRANCHES:
                return best or Found(TOO_BIG, _MAX_SIZE + 1)
            assert failed is not None
            if len(branches) == 1:
                return failed
            where = failed.where or self.path(node)
            return replace(
                failed, problem=f'no branch of "{word}" has a valid value (the first: {failed.problem})', where=where
            )
        return self._local([self._nodes[node_id] for node_id, _ in atoms], depth)

    def _swap(self, key: Key, atom: Atom, parts: Sequence[Any]) -> Key:
        """`key` with `atom` advanced past its stage and `parts` added."""
        node = self._nodes[atom[0]]
        atoms = set(key)
        atoms.discard(atom)
        advanced = self._atom(node, atom[1] + 1)
        if advanced is not None:
            atoms.add(advanced)
        for part in parts:
            added = self._atom(part)
            if added is not None:
                atoms.add(added)
        return frozenset(atoms)

    # --- one conjunction of local keywords -----------------------------------------------------------------
    def _local(self, nodes: list[dict[str, Any]], depth: int) -> Result:
        kinds = set(_KINDS)
        typed: list[dict[str, Any]] = []
        for node in nodes:
            if "type" in node:
                kinds &= _type_kinds(node["type"])
                typed.append(node)
        excluded: list[Any] = []
        for node in nodes:
            if "not" not in node:
                continue
            inner = node["not"]
            if inner is True or (isinstance(inner, dict) and not any(k not in _ANNOTATIONS for k in inner)):
                return Missing(
                    '"not" is given a schema that accepts every value, so it rejects every value',
                    'Remove the "not" or narrow the schema inside it.',
                    self.path(node),
                )
            if isinstance(inner, dict):
                words = {k for k in inner if k not in _ANNOTATIONS}
                if words == {"type"}:
                    names = inner["type"] if isinstance(inner["type"], list) else [inner["type"]]
                    for name in names:
                        kinds -= {"integer", "number"} if name == "number" else {str(name)}
                elif words <= {"enum", "const"}:
                    excluded.extend(inner.get("enum", []) if isinstance(inner.get("enum"), list) else [])
                    if "const" in inner:
                        excluded.append(inner["const"])
        listed = self._listed(nodes)
        if listed is not None:
            return self._from_list(nodes, listed, kinds, excluded)
        if not kinds:
            where = self.path(typed[-1]) if typed else self.path(nodes[0])
            return Missing(
                '"type" allows no type here (the types asked for where schemas meet, or are narrowed by "not", '
                "don't overlap)",
                'Make the "type" keywords that apply here agree.',
                where,
            )
        implied = _implied(nodes)
        found: list[Found] = []
        first_failure: Missing | None = None
        for kind in sorted(kinds, key=lambda kind: (kind not in implied, _KINDS.index(kind))):
            result = self._kind(kind, nodes, excluded, depth)
            if kind == "number" and "integer" not in kinds and isinstance(result, Found):
                result = _fraction(result, nodes)  # "not": {"type": "integer"} leaves the other numbers
            if isinstance(result, Found):
                if kind in implied:  # what the schema evidently describes, when it is possible
                    return result
                found.append(result)
            elif first_failure is None:
                first_failure = result
        if found:
            return min(found, key=lambda f: f.size)
        assert first_failure is not None
        return first_failure

    def _listed(self, nodes: list[dict[str, Any]]) -> list[Any] | None:
        """The values `enum`/`const` leave, or None when neither is there."""
        listed: list[Any] | None = None
        for node in nodes:
            for values in ([node["const"]] if "const" in node else None, node.get("enum")):
                if not isinstance(values, list):
                    continue
                listed = list(values) if listed is None else [v for v in listed if any(_same(v, w) for w in values)]
        return listed

    def _from_list(
        self, nodes: list[dict[str, Any]], listed: list[Any], kinds: set[str], excluded: list[Any]
    ) -> Result:
        where = self.path(next(n for n in nodes if "enum" in n or "const" in n))
        if not listed:
            return Missing(
                'the "enum"/"const" lists that apply here have no value in common (or the "enum" is empty)',
                'Give "enum"/"const" at least one value that every one of them allows.',
                where,
            )
        # Shortest first: the first value that passes is the one wanted.
        ordered = sorted(listed, key=_size)
        checked = any(
            word not in ("type", "enum", "const", "not") and word in _CONSTRAINTS for n in nodes for word in n
        )
        for value in ordered:
            if not _kinds_of(value) & kinds or any(_same(value, x) for x in excluded):
                continue
            if not checked or self._valid(value, nodes):
                return _found(value)
        shown = json.dumps(listed[:5], ensure_ascii=False)[:200]
        return Missing(
            f'none of the values of "enum"/"const" ({shown}) is valid against the other keywords here (such as "type")',
            'Make "enum"/"const" agree with "type" and the other keywords beside it.',
            where,
        )

    def _valid(self, value: Any, nodes: list[dict[str, Any]]) -> bool:
        """Whether an `enum` value passes the nodes, their `$ref`s and branches included; False only when it
        surely doesn't. A validator of our own, bounded in depth and work: a general one recurses without
        end on `{"not": {"$ref": "#"}}` and the like."""
        self._checks = 0
        try:
            return all(self._admits(value, node, 0) for node in nodes)
        except _GiveUp:
            return True

    def _admits(self, value: Any, schema: Any, depth: int) -> bool:
        if schema is False:
            return False
        if not isinstance(schema, dict) or depth > _MAX_CHECK_DEPTH:
            return True
        self._checks += 1
        if self._checks > _MAX_CHECKS:
            raise _GiveUp
        if "$ref" in schema:
            try:
                target = self._resolve(schema["$ref"], schema)
            except Unresolvable:
                target = True
            if not self._admits(value, target, depth + 1):
                return False
        for word in ("allOf", "anyOf", "oneOf"):
            parts = schema.get(word)
            if isinstance(parts, list) and parts:
                passed = (self._admits(value, part, depth + 1) for part in parts)
                if not (all(passed) if word == "allOf" else any(passed)):
                    return False
        inner = schema.get("not")
        if inner is True or (isinstance(inner, dict) and _surely_matches(value, inner)):
            return False
        if "type" in schema and not _kinds_of(value) & _type_kinds(schema["type"]):
            return False
        if "const" in schema and not _same(value, schema["const"]):
            return False
        if isinstance(schema.get("enum"), list) and not any(_same(value, v) for v in schema["enum"]):
            return False
        if _is_number(value):
            return _admits_number(schema, value, multiples=True)
        if isinstance(value, str):
            return self._admits_string(schema, value)
        if isinstance(value, list):
            return self._admits_array(schema, value, depth)
        if isinstance(value, dict):
            return self._admits_object(schema, value, depth)
        return True

    @staticmethod
    def _admits_string(schema: dict[str, Any], value: str) -> bool:
        shortest, longest = schema.get("minLength"), schema.get("maxLength")
        if (_is_number(shortest) and len(value) < shortest) or (_is_number(longest) and len(value) > longest):
            return False
        return not isinstance(schema.get("pattern"), str) or _search(schema["pattern"], value)

    def _admits_array(self, schema: dict[str, Any], value: list[Any], depth: int) -> bool:
        fewest, most = schema.get("minItems"), schema.get("maxItems")
        if (_is_number(fewest) and len(value) < fewest) or (_is_number(most) and len(value) > most):
            return False
        prefix = _listed_in(schema, "prefixItems")
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else schema.get("items", True)
            if not self._admits(item, sub, depth + 1):
                return False
        return True

    def _admits_object(self, schema: dict[str, Any], value: dict[str, Any], depth: int) -> bool:
        required = _listed_in(schema, "required")
        if any(name not in value for name in required):
            return False
        fewest, most = schema.get("minProperties"), schema.get("maxProperties")
        if (_is_number(fewest) and len(value) < fewest) or (_is_number(most) and len(value) > most):
            return False
        dependent = schema.get("dependentRequired")
        if isinstance(dependent, dict):
            for name, needs in dependent.items():
                if name in value and isinstance(needs, list) and any(need not in value for need in needs):
                    return False
        properties = _mapped_in(schema, "properties")
        patterns = _mapped_in(schema, "patternProperties")
        for name, item in value.items():
            if "propertyNames" in schema and not self._admits(name, schema["propertyNames"], depth + 1):
                return False
            subs = [properties[name]] if name in properties else []
            subs += [sub for pattern, sub in patterns.items() if _search(pattern, name)]
            if not subs:
                subs = [schema.get("additionalProperties", True)]
            if not all(self._admits(item, sub, depth + 1) for sub in subs):
                return False
        return True

    def _kind(self, kind: str, nodes: list[dict[str, Any]], excluded: list[Any], depth: int) -> Result:
        if kind == "null":
            if any(x is None for x in excluded):
                return Missing('"not" excludes the only value left (null)', 'Remove the "not".', self.path(nodes[0]))
            return Found(None, 4)
        if kind == "boolean":
            for value in (False, True):
                if not any(x is value for x in excluded):
                    return _found(value)
            return Missing('"not" excludes both true and false', 'Remove the "not".', self.path(nodes[0]))
        if kind in ("integer", "number"):
            return self._number(nodes, integer=kind == "integer")
        if kind == "string":
            return self._string(nodes)
        if kind == "array":
            return self._array(nodes, depth)
        return self._object(nodes, depth)

    def _number(self, nodes: list[dict[str, Any]], *, integer: bool) -> Result:
        low: float | None = None
        low_open = False
        high: float | None = None
        high_open = False
        low_node = high_node = nodes[0]
        steps: list[float] = []
        for node in nodes:
            for word, is_open in (("minimum", False), ("exclusiveMinimum", True)):
                value = node.get(word)
                if _is_number(value) and (low is None or value > low or (value == low and is_open)):
                    low, low_open, low_node = value, is_open, node
            for word, is_open in (("maximum", False), ("exclusiveMaximum", True)):
                value = node.get(word)
                if _is_number(value) and (high is None or value < high or (value == high and is_open)):
                    high, high_open, high_node = value, is_open, node
            step = node.get("multipleOf")
            if _is_number(step) and step > 0:
                steps.append(step)
        where = self.path(high_node if high_node is not nodes[0] else low_node)
        if low is not None and high is not None and (low > high or (low == high and (low_open or high_open))):
            return Missing(
                f"the lower bound {_bound(low, low_open, 'min')} is not below the upper bound "
                f"{_bound(high, high_open, 'max')}",
                "Make the minimum smaller than the maximum.",
                where,
            )

        def fits(value: float) -> bool:
            above = low is None or value > low or (value == low and not low_open)
            below = high is None or value < high or (value == high and not high_open)
            return above and below

        if integer:
            steps = [*steps, 1]
        if not steps:
            if fits(0):
                return Found(0, 1)
            if low is not None and not low_open:
                return _found(low)
            if high is not None and not high_open:
                return _found(high)
            if low is not None and high is not None:
                return _found((low + high) / 2)
            return _found(low + 1 if low is not None else high - 1)  # type: ignore[operator]
        step = _common_step(steps)
        if step is None:  # steps with no exact common multiple we can compute: not ours to judge
            return _found(0 if fits(0) else (low if low is not None else high))
        if fits(0):
            return Found(0, 1)
        try:
            if low is not None and low >= 0:  # 0 doesn't fit: the values are all positive or all negative
                value = math.ceil(low / step) * step
                if value == low and low_open:
                    value += step
            else:
                assert high is not None
                value = math.floor(high / step) * step
                if value == high and high_open:
                    value -= step
            whole = float(value).is_integer() and (integer or all(float(s).is_integer() for s in steps))
        except (OverflowError, ValueError):  # bounds and steps past what floats hold: not ours to judge
            return _found(low if low is not None else high)
        if not fits(value):
            what = "integer" if steps == [1] else f"multiple of {_plain(step)}"
            return Missing(
                f"no {what} lies between {_bound(low, low_open, 'min')} and {_bound(high, high_open, 'max')}",
                "Widen the bounds or change multipleOf.",
                where,
            )
        return _found(int(value) if whole else value)

    def _string(self, nodes: list[dict[str, Any]]) -> Result:
        shortest = max((n["minLength"] for n in nodes if _is_number(n.get("minLength"))), default=0)
        longest = min((n["maxLength"] for n in nodes if _is_number(n.get("maxLength"))), default=None)
        if longest is not None and shortest > longest:
            where = self.path(next(n for n in nodes if n.get("maxLength") == longest))
            return Missing(
                f"minLength {_plain(shortest)} is greater than maxLength {_plain(longest)}",
                "Make minLength at most maxLength.",
                where,
            )
        if shortest > _MAX_SIZE:
            return Found(TOO_BIG, int(shortest) + 2)
        patterns = [n["pattern"] for n in nodes if isinstance(n.get("pattern"), str)]
        formats = [n["format"] for n in nodes if isinstance(n.get("format"), str)]
        candidates = [FORMAT_SAMPLES[f] for f in formats if f in FORMAT_SAMPLES]
        for pattern in patterns:
            sample = shortest_match(pattern)
            if sample is not None:
                candidates += [sample, sample + "a" * int(shortest - len(sample))]
        candidates.append("a" * int(shortest))

        def fits(text: str) -> bool:
            if len(text) < shortest or (longest is not None and len(text) > longest):
                return False
            return all(_search(pattern, text) for pattern in patterns)

        for text in candidates:
            if fits(text):
                return _found(text)
        # Patterns and formats are llguidance's to judge: assume a value exists.
        return _found(candidates[0])

    def _array(self, nodes: list[dict[str, Any]], depth: int) -> Result:
        count = max((n["minItems"] for n in nodes if _is_number(n.get("minItems"))), default=0)
        most = min((n["maxItems"] for n in nodes if _is_number(n.get("maxItems"))), default=None)
        if most is not None and count > most:
            where = self.path(next(n for n in nodes if n.get("maxItems") == most))
            return Missing(
                f"minItems {_plain(count)} is greater than maxItems {_plain(most)}",
                "Make minItems at most maxItems.",
                where,
            )
        count = int(count)
        prefix = max((len(n["prefixItems"]) for n in nodes if isinstance(n.get("prefixItems"), list)), default=0)
        values: list[Any] = []
        size = 2
        last: Found | None = None
        # Items past every prefix share one schema: finding one value for them is enough.
        for index in range(min(count, prefix + 1)):
            key = self._key(self._item_schemas(nodes, index))
            if _FALSE in key:
                return Missing(
                    f"minItems asks for {count} items, but no item is allowed at position {index} (its schema, "
                    'from "prefixItems" or "items", is `false`)',
                    'Lower minItems, or allow that item in "prefixItems" or "items".',
                    self.path(nodes[0]),
                )
            result = self._get(key, depth + 1)
            if isinstance(result, Missing):
                return result
            values.append(result.value)
            size += result.size + (2 if index else 0)
            last = result
        extra = count - len(values)
        if extra > 0:
            assert last is not None
            size += extra * (last.size + 2)
            if size <= _MAX_SIZE:
                values.extend([last.value] * extra)
        if size > _MAX_SIZE or any(v is TOO_BIG for v in values):
            return Found(TOO_BIG, size)
        return Found(values, size)

    @staticmethod
    def _item_schemas(nodes: list[dict[str, Any]], index: int) -> list[Any]:
        schemas: list[Any] = []
        for node in nodes:
            prefix = node.get("prefixItems")
            if isinstance(prefix, list) and index < len(prefix):
                schemas.append(prefix[index])
            elif "items" in node:
                schemas.append(node["items"])
        return schemas

    def _object(self, nodes: list[dict[str, Any]], depth: int) -> Result:
        required: list[str] = []
        for node in nodes:
            for name in node.get("required", []) if isinstance(node.get("required"), list) else []:
                if isinstance(name, str) and name not in required:
                    required.append(name)
        grew = True
        while grew:  # dependentRequired: a present property requires others
            grew = False
            for node in nodes:
                dependent = node.get("dependentRequired")
                if not isinstance(dependent, dict):
                    continue
                for name in list(required):
                    for more in dependent.get(name, []) if isinstance(dependent.get(name), list) else []:
                        if isinstance(more, str) and more not in required:
                            required.append(more)
                            grew = True
        fewest = max((n["minProperties"] for n in nodes if _is_number(n.get("minProperties"))), default=0)
        most = min((n["maxProperties"] for n in nodes if _is_number(n.get("maxProperties"))), default=None)
        if most is not None and max(fewest, len(required)) > most:
            where = self.path(next(n for n in nodes if n.get("maxProperties") == most))
            asked = (
                f"{len(required)} properties are required"
                if len(required) > fewest
                else f"minProperties is {_plain(fewest)}"
            )
            return Missing(
                f"{asked} but maxProperties is {_plain(most)}",
                "Raise maxProperties, or require fewer properties.",
                where,
            )
        value: dict[str, Any] = {}
        size = 2
        for name in required:
            result = self._property(nodes, name, depth)
            if isinstance(result, Missing):
                return result
            value[name] = result.value
            size += len(json.dumps(name, ensure_ascii=False)) + 2 + result.size + (2 if len(value) > 1 else 0)
        if len(value) < fewest:
            if fewest - len(value) > 1000 or any(n.get("patternProperties") for n in nodes):
                return Found(TOO_BIG, _MAX_SIZE + 1)  # names matching patterns may exist: assumed, not built
            spare: list[str] = []
            for node in nodes:
                properties = node.get("properties")
                if isinstance(properties, dict):
                    spare += [str(name) for name in properties]
            spare += [f"k{i}" for i in range(int(fewest) + 1)]
            for name in dict.fromkeys(spare):
                if len(value) >= fewest:
                    break
                if name in value:
                    continue
                result = self._property(nodes, name, depth)
                if isinstance(result, Found):
                    value[name] = result.value
                    size += len(json.dumps(name, ensure_ascii=False)) + 4 + result.size
            if len(value) < fewest:
                return Missing(
                    f"minProperties is {_plain(fewest)}, but only {len(value)} properties can be present",
                    'Lower minProperties, or allow more properties ("properties" or "additionalProperties").',
                    self.path(next(n for n in nodes if n.get("minProperties") == fewest)),
                )
        if size > _MAX_SIZE or any(v is TOO_BIG for v in value.values()):
            return Found(TOO_BIG, size)
        return Found(value, size)

    def _property(self, nodes: list[dict[str, Any]], name: str, depth: int) -> Result:
        """A value for property `name` where every node applies, or why it can't be present."""
        schemas: list[Any] = []
        for node in nodes:
            names = node.get("propertyNames")
            if names is not None and not self._valid_name(name, names):
                return Missing(
                    f'the property "{name}" is required but "propertyNames" does not allow that name',
                    'Allow the name in "propertyNames", or stop requiring it.',
                    self.path(node),
                )
            properties = node.get("properties")
            if isinstance(properties, dict) and name in properties:
                if properties[name] is False:
                    return Missing(
                        f'the property "{name}" is required but its schema is `false`',
                        f'Give "{name}" a schema, or remove it from "required".',
                        self.path(node),
                    )
                schemas.append(properties[name])
                continue
            patterns = node.get("patternProperties")
            matched = [s for p, s in patterns.items() if _search(p, name)] if isinstance(patterns, dict) else []
            if matched:
                schemas.extend(matched)
            elif "additionalProperties" in node:
                if node["additionalProperties"] is False:
                    return Missing(
                        f'the property "{name}" is required, but "additionalProperties": false forbids it '
                        '(it is not under "properties")',
                        f'Add "{name}" to "properties", or remove it from "required".',
                        self.path(node),
                    )
                schemas.append(node["additionalProperties"])
        key = self._key(schemas)
        if _FALSE in key:
            return Missing(
                f'the property "{name}" is required, but a schema that applies to it is `false`',
                f'Allow "{name}", or remove it from "required".',
                self.path(nodes[0]),
            )
        return self._get(key, depth + 1)

    def _valid_name(self, name: str, schema: Any) -> bool:
        self._checks = 0
        try:
            return self._admits(name, schema, 0)
        except _GiveUp:
            return True


# Keywords whose values are schemas, maps of schemas, or lists of schemas (draft 2020-12).
_SCHEMA_WORDS = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
     "unevaluatedItems", "unevaluatedProperties", "additionalItems"}
)  # fmt: skip
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})


def subschemas(schema: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    """The schemas directly inside `schema`, each with the steps of its JSON pointer from it."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for word, value in schema.items():
        if word in _SCHEMA_WORDS:
            found.append(((word,), value))
        elif word in _SCHEMA_MAPS and isinstance(value, dict):
            found.extend(((word, str(name)), sub) for name, sub in value.items())
        elif word in _SCHEMA_LISTS and isinstance(value, list):
            found.extend(((word, str(i)), sub) for i, sub in enumerate(value))
    return found


def _escape(step: str) -> str:
    return step.replace("~", "~0").replace("/", "~1")


def _found(value: Any) -> Found:
    return Found(value, _size(value))


def _size(value: Any) -> int:
    """Characters of the value's JSON text (escapes in strings aside)."""
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, int | float):
        return len(repr(value))
    return len(json.dumps(value, ensure_ascii=False))


def _implied(nodes: list[dict[str, Any]]) -> set[str]:
    """The type a schema without `type` is evidently about, preferred when it is possible."""
    words = {word for node in nodes for word in node}
    if words & {"properties", "required", "additionalProperties", "minProperties", "patternProperties"}:
        return {"object"}
    if words & {"items", "prefixItems", "minItems"}:
        return {"array"}
    if words & {"minLength", "pattern", "format", "maxLength"}:
        return {"string"}
    return set()


def _fraction(found: Found, nodes: list[dict[str, Any]]) -> Found:
    """A number that is not an integer, near the one found, where the bounds let one be found simply."""
    if not (isinstance(found.value, float) and not found.value.is_integer()):
        for value in (found.value + 0.5, found.value - 0.5):
            if all(_admits_number(node, value) for node in nodes):
                return _found(value)
    return found


def _admits_number(node: dict[str, Any], value: float, *, multiples: bool = False) -> bool:
    """Whether `value` is within the node's bounds (and, with `multiples`, surely not off its multipleOf)."""
    low, high = node.get("minimum"), node.get("maximum")
    above, below = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    step = node.get("multipleOf")
    if multiples and isinstance(value, int) and isinstance(step, int) and step > 0 and value % step:
        return False
    return not (
        (_is_number(low) and value < low)
        or (_is_number(high) and value > high)
        or (_is_number(above) and value <= above)
        or (_is_number(below) and value >= below)
        or (not multiples and _is_number(step))
    )


def _listed_in(schema: dict[str, Any], word: str) -> list[Any]:
    value = schema.get(word)
    return value if isinstance(value, list) else []


def _mapped_in(schema: dict[str, Any], word: str) -> dict[str, Any]:
    value = schema.get(word)
    return value if isinstance(value, dict) else {}


def _surely_matches(value: Any, schema: dict[str, Any]) -> bool:
    """Whether `value` is valid against a `not`'s schema, decided only for the forms decided simply: one
    that accepts everything, or only a type, an enum or a const."""
    words = {word for word in schema if word not in _ANNOTATIONS}
    if not words:
        return True
    if words == {"type"}:
        return bool(_kinds_of(value) & _type_kinds(schema["type"]))
    if words <= {"enum", "const"}:
        return any(_same(value, v) for v in _listed_in(schema, "enum")) or (
            "const" in schema and _same(value, schema["const"])
        )
    return False


def _type_kinds(names: Any) -> set[str]:
    kinds: set[str] = set()
    for name in names if isinstance(names, list) else [names]:
        kinds |= _TYPE_KINDS.get(str(name), set())
    return kinds


def _kinds_of(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _is_number(value: Any) -> TypeGuard[float]:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _common_step(steps: list[float]) -> float | None:
    """The least common multiple of the `multipleOf`s (and 1 for integers), when it can be exact."""
    try:
        if all(isinstance(s, int) or s.is_integer() for s in steps):
            return math.lcm(*(int(s) for s in steps))
        distinct = set(steps) - {1}
        if len(distinct) == 1:
            only = next(iter(distinct))
            return 1 if 1 in steps and (1 / only).is_integer() else only if 1 not in steps else None
    except (OverflowError, ValueError):
        pass
    return None


def _bound(value: float | None, is_open: bool, side: str) -> str:
    if value is None:
        return "(none)"
    word = (
        ("exclusiveMinimum" if is_open else "minimum")
        if side == "min"
        else ("exclusiveMaximum" if is_open else "maximum")
    )
    return f"{word} {_plain(value)}"


def _plain(value: float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() else str(value)


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except (re.error, RecursionError):
        return True  # a pattern Python can't read is llguidance's to judge


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
