"""Every prefix of a valid document, closed by the closer, is a valid document."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from pipeserve.structured.closer import JsonCloser
from pipeserve.structured.instances import shortest_match
from pipeserve.structured.schema import SchemaView
from tests.structured.schemas import random_schema, random_value

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def assert_every_prefix_closes(schema: dict, text: str) -> None:  # type: ignore[type-arg]
    validator = jsonschema.Draft202012Validator(schema, format_checker=CHECKER)
    for cut in range(len(text) + 1):
        closer = JsonCloser(schema).feed(text[:cut])
        closed = text[:cut] + closer.closing()
        errors = list(validator.iter_errors(json.loads(closed)))
        assert not errors, (text[:cut], closed, errors[0].message)


@pytest.mark.parametrize("seed", range(60))
def test_random_schemas_close_from_every_prefix(seed: int) -> None:
    rng = random.Random(seed)
    schema = random_schema(rng)
    value = random_value(rng, schema)
    assert_every_prefix_closes(schema, json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


def test_closing_completes_enums_keys_literals_numbers_and_escapes() -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["crimson", "cyan"]}, "n": {"type": "integer", "minimum": 18}},
        "required": ["colour", "n"],
        "additionalProperties": False,
    }
    assert JsonCloser(schema).feed('{"colour": "cr').closing() == 'imson", "n": 18}'
    assert JsonCloser(schema).feed('{"co').closing() == 'lour": "cyan", "n": 18}'
    assert JsonCloser(schema).feed('{"colour": "cyan", "n": 4').closing() == "0}"
    assert JsonCloser({"type": "boolean"}).feed("tr").closing() == "ue"
    assert JsonCloser({"type": "string"}).feed('"a\\u00').closing() == '00"'
    assert JsonCloser({"type": "number"}).feed("-").closing() == "0"
    assert JsonCloser({"type": "array", "minItems": 2, "items": {"type": "integer"}}).feed("[").closing() == "0, 0]"
    assert JsonCloser({"type": "object"}).feed('{"a": 1}').closing() == ""


def test_minimal_values_respect_the_schema() -> None:
    view = SchemaView({"$defs": {"p": {"type": "integer", "exclusiveMinimum": 3}}})
    assert view.minimal({"$ref": "#/$defs/p"}) == 4
    assert view.minimal({"type": "string", "minLength": 3}) == "aaa"
    assert view.minimal({"anyOf": [{"type": "null"}, {"type": "string"}]}) == ""  # the shortest branch
    assert view.minimal({"anyOf": [{"type": "null"}, {"type": "string", "minLength": 3}]}) is None
    assert view.minimal({"type": "object", "minProperties": 1, "properties": {"x": {"const": 5}}}) == {"x": 5}
    assert shortest_match(r"^\d{3}-[A-Z]{2}$") == "000-AA"


LINKED = {
    "type": "object",
    "properties": {"value": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
    "required": ["value", "next"],
    "additionalProperties": False,
}


def test_a_recursive_schema_closes_with_its_base_case_from_every_prefix() -> None:
    text = json.dumps({"value": 3, "next": {"value": 2, "next": {"value": 1, "next": None}}})
    assert_every_prefix_closes(LINKED, text)
    assert JsonCloser(LINKED).closing() == '{"value": 0, "next": null}'
    assert JsonCloser(LINKED).feed('{"value": 3, "next": {"va').closing() == 'lue": 0, "next": null}}'


def test_a_value_after_a_colon_and_its_space_gets_no_second_space() -> None:
    assert JsonCloser(LINKED).feed('{"value": 3, "next": ').closing() == "null}"
    assert JsonCloser(LINKED).feed('{"value": 3, "next":').closing() == " null}"


def test_no_closing_is_offered_when_the_shortest_value_is_too_long_to_write() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "minItems": 10**6}}, "required": ["a"]}
    assert JsonCloser(schema).closing() is None
    assert JsonCloser(schema).feed('{"a": [1, 2').closing() is None
