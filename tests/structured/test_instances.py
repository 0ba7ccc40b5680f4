"""Which schemas have a finite valid value (the fixpoint analysis), the shortest value, and the 400s."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import jsonschema
import pytest

from pipeserve.errors import InvalidRequestError
from pipeserve.structured.instances import _MAX_WORK, TOO_BIG, Found, Instances, Missing
from pipeserve.structured.schema import check_schema
from tests.structured.schemas import random_schema

PARAM = "response_format.json_schema.schema"
NULLABLE_SELF = {"anyOf": [{"$ref": "#"}, {"type": "null"}]}
# jsonschema itself can't validate against NULLABLE_SELF at the root (it recurses into the first branch
# forever); with the base case first it can.
NULL_OR_SELF = {"anyOf": [{"type": "null"}, {"$ref": "#"}]}

# Each schema with no finite valid value, and words its 400 must contain (what is wrong, and where).
UNSATISFIABLE: list[tuple[Any, list[str]]] = [
    ({"$ref": "#"}, ['"$ref": "#"', "way out"]),
    ({"anyOf": [{"$ref": "#"}]}, ['"$ref": "#"', "#/anyOf/0"]),
    ({"allOf": [{"$ref": "#"}], "type": "object"}, ['"$ref": "#"']),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, ["$ref", "way out"]),
    (
        {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
        ["#/properties/next", '"required"'],
    ),
    (
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 1}},
                    "required": ["kids"],
                }
            },
            "$ref": "#/$defs/node",
        },
        ['"$ref": "#/$defs/node"', "#/$defs/node/properties/kids/items"],
    ),
    (
        {
            "type": "object",
            "properties": {"a": {"anyOf": [{"$ref": "#"}, {"type": "string", "minLength": 3, "maxLength": 1}]}},
            "required": ["a"],
        },
        ['"anyOf"'],
    ),
    ({"not": {}}, ['"not"']),
    ({"not": True}, ['"not"']),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, ['"a"', "`false`", "(at #)"]),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, ['"additionalProperties": false', '"a"']),
    ({"type": "object", "properties": {"x": {}}, "required": ["y"], "additionalProperties": False}, ['"y"']),
    ({"type": "string", "enum": [1, 2]}, ['"enum"']),
    ({"const": "a", "enum": ["b"]}, ['"enum"']),
    ({"enum": []}, ['"enum"']),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, ['"type"']),
    ({"allOf": [{"type": "integer"}, {"anyOf": [{"type": "string"}, {"type": "boolean"}]}]}, ['"type"']),
    ({"type": "string", "not": {"type": "string"}}, ['"type"']),
    ({"type": "boolean", "not": {"enum": [True, False]}}, ['"not"']),
    ({"type": "array", "minItems": 3, "maxItems": 1}, ["minItems 3", "maxItems 1"]),
    ({"type": "array", "items": False, "minItems": 1}, ["minItems"]),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": False, "minItems": 2}, ["position 1"]),
    ({"type": "integer", "minimum": 5, "maximum": 1}, ["minimum 5", "maximum 1"]),
    ({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, ["exclusiveMinimum 1"]),
    ({"type": "integer", "minimum": 0.2, "maximum": 0.8}, ["integer"]),
    ({"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 4}, ["multiple of 5"]),
    ({"type": "string", "minLength": 5, "maxLength": 2}, ["minLength 5", "maxLength 2"]),
    ({"type": "object", "maxProperties": 1, "required": ["a", "b"]}, ["maxProperties"]),
    ({"type": "object", "minProperties": 2, "properties": {"a": {}}, "additionalProperties": False}, ["minProperties"]),
    ({"type": "object", "propertyNames": {"maxLength": 1}, "required": ["long"]}, ['"propertyNames"']),
    ({"type": "object", "required": ["a"], "dependentRequired": {"a": ["b"]}, "properties": {"b": False}}, ['"b"']),
]

# Each has a finite valid value, some only through a base case of a recursion.
SATISFIABLE: list[Any] = [
    {},
    {"type": "object"},
    NULL_OR_SELF,
    {"type": "object", "properties": {"next": NULLABLE_SELF}, "required": ["next"]},
    {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["kids"]},
    {
        "$defs": {
            "e": {
                "anyOf": [
                    {"type": "object", "properties": {"l": {"$ref": "#/$defs/e"}}, "required": ["l"]},
                    {"type": "integer"},
                ]
            }
        },
        "$ref": "#/$defs/e",
    },
    {"properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # any non-object is valid
    {
        "anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}],
        "$defs": {"a": {"type": "array", "items": {"$ref": "#"}, "minItems": 1}},
    },
    {"type": "integer", "exclusiveMinimum": 3, "multipleOf": 2},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": 0.5, "maximum": 1.5},
    {"type": ["string", "integer"], "minLength": 9, "maxLength": 2},  # the integer branch
    {
        "type": "object",
        "required": ["a"],
        "additionalProperties": False,
        "patternProperties": {"^a$": {"type": "string"}},
    },
    {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "required": ["ok"]},
    {"enum": [{"a": 1}, "x"], "type": "object", "properties": {"a": {"type": "integer"}}},
    {"type": "string", "pattern": "^[a-z]{3}[0-9]{2}$"},
    {"type": "string", "format": "email"},
    {"type": "array", "prefixItems": [{"const": 1}, {"const": "two"}], "minItems": 2, "items": False},
    {"type": "object", "minProperties": 2, "properties": {"a": {"type": "integer"}}},
    {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    {"$ref": "https://example.com/elsewhere.json"},  # not ours to follow: llguidance judges it
    {"if": {"type": "string"}, "then": {"minLength": 2}, "dependentSchemas": {"a": False}},
]


def _reject(schema: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        check_schema(schema, param=PARAM)
    return caught.value


@pytest.mark.parametrize(("schema", "words"), UNSATISFIABLE)
def test_a_schema_without_a_finite_value_is_a_400_saying_what_to_change(schema: Any, words: list[str]) -> None:
    error = _reject(schema)
    assert error.param == PARAM
    message = str(error)
    assert message.startswith(f"{PARAM} can't be satisfied by any finite JSON value: ")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("schema", SATISFIABLE)
def test_a_schema_with_a_finite_value_passes_and_its_shortest_value_is_valid(schema: Any) -> None:
    assert check_schema(schema, param=PARAM) is schema
    result = Instances(schema).find(schema)
    assert isinstance(result, Found)
    if "$ref" in schema and not schema["$ref"].startswith("#"):
        return
    if "if" not in schema:  # ignored keywords aside, the value found is valid
        jsonschema.Draft202012Validator(schema).validate(result.value)


def test_the_shortest_value_takes_the_base_case_of_a_recursion() -> None:
    linked = {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "next": NULLABLE_SELF},
        "required": ["v", "next"],
    }
    assert Instances(linked).find(linked) == Found({"v": 0, "next": None}, len('{"v": 0, "next": null}'))
    tree = SATISFIABLE[5]
    result = Instances(tree).find(tree)
    assert isinstance(result, Found) and result.value == 0


def test_a_reference_to_nothing_is_a_400_naming_it() -> None:
    error = _reject({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert error.param == PARAM
    assert '"$ref": "#/$defs/missing"' in str(error) and "#/properties/a" in str(error)


def test_the_tool_parameter_is_named() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_schema({"$ref": "#"}, param="tools[2].function.parameters")
    assert caught.value.param == "tools[2].function.parameters"
    assert str(caught.value).startswith("tools[2].function.parameters can't be satisfied")


def test_values_too_long_to_write_are_known_to_exist_without_being_built() -> None:
    for schema in ({"type": "array", "minItems": 10**9}, {"type": "string", "minLength": 10**9}):
        result = Instances(schema).find(schema)
        assert isinstance(result, Found) and result.value is TOO_BIG and result.size > 10**9


def nest(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


DEEP = nest(400)


@pytest.mark.parametrize(
    ("schema", "judged"),
    [
        (nest(60), True),
        (DEEP, False),  # past the depth bound: the analysis gives up and rejects nothing
        (
            {
                "$defs": {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(500)} | {"a500": {"type": "null"}},
                "$ref": "#/$defs/a0",
            },
            False,
        ),
        # 10**8 branch combinations, all satisfiable: bounded work
        ({"allOf": [{"anyOf": [{"type": "integer", "minimum": k} for k in range(10)]} for _ in range(8)]}, False),
    ],
)
def test_deep_long_and_combinatorial_schemas_are_analysed_with_bounded_work(schema: Any, judged: bool) -> None:
    instances = Instances(schema)
    result = instances.find(schema)
    assert isinstance(result, Found) if judged else result is None
    assert instances._work <= _MAX_WORK
    if schema is not DEEP:
        check_schema(schema, param=PARAM)  # given up: nothing rejected


def test_a_schema_too_deep_to_check_is_a_400() -> None:
    error = _reject(DEEP)  # the metaschema check itself recurses past Python's limit
    assert error.param == PARAM and "nested too deeply" in str(error)


def test_a_bounded_analysis_still_finds_a_contradiction_among_many_branches() -> None:
    product = {"allOf": [{"anyOf": [{"type": "integer", "minimum": k} for k in range(10)]} for _ in range(8)]}
    error = _reject({**product, "type": "string"})
    assert '"type"' in str(error)


def test_the_analysis_of_a_missing_value_says_where() -> None:
    deep = {"type": "array", "items": {"enum": []}, "minItems": 1}
    schema = {"type": "object", "properties": {"deep": deep}, "required": ["deep"]}
    result = Instances(schema).find(schema)
    assert isinstance(result, Missing) and result.where == "/properties/deep/items"


@pytest.mark.parametrize("seed", range(150))
def test_random_schemas_have_a_valid_shortest_value(seed: int) -> None:
    rng = random.Random(seed)
    schema = random_schema(rng)
    if rng.random() < 0.5:  # wrap into a recursion with a way out
        schema = {"anyOf": [schema, {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}]}
    check_schema(schema, param=PARAM)
    result = Instances(schema).find(schema)
    assert isinstance(result, Found)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(
        result.value
    )


@pytest.mark.parametrize(
    "schema",
    [
        # Checking an enum value against these recurses without end in a general validator.
        {"enum": [1], "minimum": 0, "not": {"$ref": "#"}},
        {"enum": [1, "a"], "minimum": 0, "anyOf": [{"$ref": "#"}, {"$ref": "#"}]},
        {"type": "object", "required": ["a"], "propertyNames": {"minLength": 1, "not": {"$ref": "#/propertyNames"}}},
        # Numbers past what floats hold.
        {"type": "number", "minimum": 1e300, "multipleOf": 1e-10},
        {"type": "integer", "exclusiveMinimum": 10**400, "multipleOf": 10**400 + 1},
        {"type": "number", "maximum": -(10**400), "multipleOf": 5e-324},
        {"allOf": [{"multipleOf": 10**400}, {"multipleOf": 0.5}], "minimum": 1},
    ],
)
def test_pathological_schemas_are_judged_without_failing(schema: Any) -> None:
    with contextlib.suppress(InvalidRequestError):
        check_schema(schema, param=PARAM)
