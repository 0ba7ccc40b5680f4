"""The request log's filter as the console's URL holds it, so that a view can be shared by its address.

`?model=…&status=…&from=…&to=…&meta=key%3Dvalue&score=relevance.score<0.5&completion=…`: empty fields are
left out (an HTML form sends them all), `meta` and `score` may repeat or hold one condition a line. The same
`LogFilter` as `GET /v1/logs` selects the rows, and the datasets' own filter makes a dataset of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.datasets import LogFilter as DatasetLogFilter
from pipeserve.service.log_filters import CriterionCondition, LogFilter, parse_criterion_condition
from pipeserve.service.values import check_text, parse_time
from pipeserve.validation import validate

FIELDS = ("model", "status", "from", "to", "meta", "score", "completion")
PAGE_SIZES = (25, 50, 100, 200)


def _lines(values: Sequence[str]) -> list[str]:
    return [line.strip() for value in values for line in value.splitlines() if line.strip()]


@dataclass(frozen=True)
class ConsoleFilter:
    """The filter fields as typed (kept to fill the form again) and as the `LogFilter` they mean."""

    raw: dict[str, list[str]] = field(default_factory=dict)
    log_filter: LogFilter = field(default_factory=LogFilter)

    @property
    def empty(self) -> bool:
        return not self.raw

    def value(self, name: str) -> str:
        return "\n".join(self.raw.get(name, []))

    def query(self, **extra: str | None) -> str:
        """The URL query of this filter, with `extra` parameters (None leaves one out)."""
        pairs = [(name, value) for name in FIELDS for value in self.raw.get(name, [])]
        pairs += [(name, value) for name, value in extra.items() if value is not None]
        return urlencode(pairs)

    def for_dataset(self, *, limit: int | None, split: str | None) -> DatasetLogFilter:
        """The datasets' filter with the same meaning; a 400 for conditions that one cannot express."""
        flt = self.log_filter
        if flt.criteria:
            raise InvalidRequestError(
                "A dataset is made from the model, status, time and metadata conditions of the log filter; "
                "remove the criteria score conditions (or tag those logs with metadata first) and try again.",
                param="score",
            )
        if flt.completion_id is not None:
            raise InvalidRequestError(
                "A dataset cannot be made from one completion id; filter by model, status, time or metadata.",
                param="completion",
            )
        data: dict[str, Any] = {
            "model": flt.model,
            "status_code": flt.status_code,
            "from": flt.since,
            "to": flt.until,
            "metadata": dict(flt.metadata) or None,
            "limit": limit,
            "split": split,
        }
        return validate(DatasetLogFilter, {k: v for k, v in data.items() if v is not None})


def _metadata(lines: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in lines:
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            raise InvalidRequestError(
                f"Invalid metadata condition {line!r}: write key=value, one a line.", param="meta"
            )
        pairs[key.strip()] = value.strip()
    return pairs


def _criteria(lines: list[str]) -> list[CriterionCondition]:
    return [parse_criterion_condition(line if line.startswith("criteria.") else f"criteria.{line}") for line in lines]


def _status(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 999:
        raise InvalidRequestError(f"Invalid status {text!r}: give an HTTP status such as 200 or 400.", param="status")
    return int(text)


def parse_filter(params: Mapping[str, Sequence[str]]) -> ConsoleFilter:
    """The filter of a query string (`params`: each name's values); a 400 saying what to fix."""
    raw = {name: [v for v in params.get(name, []) if v.strip()] for name in FIELDS}
    raw = {name: values for name, values in raw.items() if values}
    check_text(raw, "filter")
    first = {name: values[0].strip() for name, values in raw.items()}
    log_filter = LogFilter(
        model=first.get("model"),
        completion_id=first.get("completion"),
        status_code=_status(first["status"]) if "status" in first else None,
        since=parse_time(first["from"], "from") if "from" in first else None,
        until=parse_time(first["to"], "to") if "to" in first else None,
        metadata=_metadata(_lines(raw.get("meta", []))),
        criteria=tuple(_criteria(_lines(raw.get("score", [])))),
    )
    return ConsoleFilter(raw=raw, log_filter=log_filter)


def page_size(params: Mapping[str, Sequence[str]]) -> int:
    values = params.get("limit") or ["50"]
    return int(values[0]) if values[0] in {str(size) for size in PAGE_SIZES} else 50
