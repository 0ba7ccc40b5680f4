"""Which logs: the conditions a listing, an export or a metadata update selects logs by.

`LogFilter` is what `GET /v1/logs` and `pipeserve logs list|export` select on (with `criteria.<name>.score<0.5`
conditions on a log's judgements); `update_clauses` turns OpenPipe's update filters into the same kind of
SQL conditions. The caller adds the project condition: nothing here is scoped to a project by itself.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import exists, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import logs as wire
from pipeserve.service.recording import tag_value
from pipeserve.service.values import check_text
from pipeserve.store.tables import log_criteria, logs


def _no_sqlite_path(key: str) -> bool:
    """SQLite's JSON paths match a key as the stored text spells it, escapes included, and have no escapes of
    their own: a key that JSON writes escaped (a double quote, a backslash, a control character) would silently
    match nothing, so its members are looked through instead (`json_each` unescapes them)."""
    return any(char in '"\\' or char < " " for char in key)


def _member(key: str, value: str | None) -> ColumnElement[bool]:
    """The metadata holds `key` with `value` (with any value but null, for None), found among its members."""
    each = func.json_each(logs.c.meta).table_valued("key", "value")
    held = each.c.value.is_not(None) if value is None else each.c.value == value
    return exists(select(literal(1)).select_from(each).where(each.c.key == key, held))


def metadata_equals(key: str, value: str, *, sqlite: bool) -> ColumnElement[bool]:
    if sqlite and _no_sqlite_path(key):
        return _member(key, value)
    clause: ColumnElement[bool] = logs.c.meta[key].as_string() == value
    return clause


def metadata_missing(key: str, *, sqlite: bool) -> ColumnElement[bool]:
    """The log's metadata has no value for `key`."""
    if sqlite and _no_sqlite_path(key):
        return ~_member(key, None)
    clause: ColumnElement[bool] = logs.c.meta[key].as_string().is_(None)
    return clause


@dataclass(frozen=True)
class CriterionCondition:
    """`criteria.<name>.score<0.5` or `criteria.<name>.status=error`, on the judgement of a log's first choice
    (with Best-of-N, the best one)."""

    name: str
    field: Literal["score", "status"]
    op: str  # one of _OPERATORS
    value: float | str

    def clause(self) -> ColumnElement[bool]:
        column = log_criteria.c.score if self.field == "score" else log_criteria.c.status
        return exists().where(
            log_criteria.c.log_id == logs.c.id,
            log_criteria.c.choice_index == 0,
            log_criteria.c.name == self.name,
            _OPERATORS[self.op](column, self.value),
        )


_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "=": operator.eq,
}
_CONDITION = re.compile(
    r"criteria\.(?P<name>[A-Za-z0-9_-]{1,64})\.(?P<field>score|status)(?P<op><=|>=|!=|<|>|=)(?P<value>.+)"
)


def parse_criterion_condition(text: str) -> CriterionCondition:
    """`criteria.<name>.score<0.5`, `...score>=0.8`, `criteria.<name>.status=error`, as written in a URL."""
    match = _CONDITION.fullmatch(text.strip())
    problem = (
        f"Invalid criteria filter {text!r}: write criteria.<name>.score followed by <, <=, >, >=, = or != and a "
        "number (criteria.relevance.score<0.5), or criteria.<name>.status=success|error."
    )
    if match is None:
        raise InvalidRequestError(problem, param=text.split("<")[0].split(">")[0].split("=")[0].split("!")[0])
    name, field_, op, raw = match["name"], match["field"], match["op"], match["value"]
    if field_ == "status":
        if op not in ("=", "!=") or raw not in ("success", "error"):
            raise InvalidRequestError(problem, param=f"criteria.{name}.status")
        return CriterionCondition(name, "status", op, raw)
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(problem, param=f"criteria.{name}.score") from None
    return CriterionCondition(name, "score", op, value)


@dataclass(frozen=True)
class LogFilter:
    """What a listing selects; every condition must hold. Times are milliseconds, `since` inclusive and
    `until` exclusive."""

    model: str | None = None
    completion_id: str | None = None
    status_code: int | None = None
    since: int | None = None
    until: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    criteria: Sequence[CriterionCondition] = ()

    def clauses(self, *, sqlite: bool) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.model is not None:
            out.append(logs.c.model == self.model)
        if self.completion_id is not None:
            out.append(logs.c.completion_id == self.completion_id)
        if self.status_code is not None:
            out.append(logs.c.status_code == self.status_code)
        if self.since is not None:
            out.append(logs.c.requested_at >= self.since)
        if self.until is not None:
            out.append(logs.c.requested_at < self.until)
        out += [metadata_equals(k, v, sqlite=sqlite) for k, v in self.metadata.items()]
        out += [condition.clause() for condition in self.criteria]
        return out


_UPDATE_FIELDS = {"model": logs.c.model, "completionId": logs.c.completion_id}


def update_clauses(filters: Sequence[wire.LogFilterItem], *, sqlite: bool) -> list[ColumnElement[bool]]:
    """OpenPipe's update filters, all of which must hold. `metadata.<key>` and the older `tags.<key>` both
    name a metadata key (tags are metadata now). No filter at all selects every log of the project, as on
    OpenPipe."""
    out: list[ColumnElement[bool]] = []
    for index, item in enumerate(filters):
        check_text([item.field, item.equals], f"filters[{index}]")
        value = str(tag_value(item.equals))
        column = _UPDATE_FIELDS.get(item.field)
        if column is not None:
            out.append(column == value)
            continue
        prefix, dot, key = item.field.partition(".")
        if prefix not in ("metadata", "tags") or not dot or not key:
            raise InvalidRequestError(
                f"Invalid value for 'filters[{index}].field': {item.field!r} is not a field we can filter on. "
                "Use 'model', 'completionId' or 'metadata.<key>'.",
                param=f"filters[{index}].field",
            )
        out.append(metadata_equals(key, value, sqlite=sqlite))
    return out
