"""The Criteria pages: the latest versions, two versions side by side with a diff of their instructions,
a judgement made by hand, and the alignment of a criterion with a labelled set."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.console.web import ConsoleRoute, Signed, field, is_fragment, read_form, render
from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.criteria import MAX_ALIGNMENT_ROWS, AlignmentRequest, Criterion
from pipeserve.service.criteria import CriteriaService
from pipeserve.service.judge import Judge, JudgeInput, JudgeOutput, align
from pipeserve.validation import validate

router = APIRouter(route_class=ConsoleRoute)


def _criteria(request: Request) -> CriteriaService:
    service: CriteriaService = request.app.state.criteria
    return service


@dataclass(frozen=True)
class DiffRow:
    tag: str  # equal | replace | delete | insert
    left: str
    right: str


def diff_lines(old: str, new: str) -> list[DiffRow]:
    """Two texts side by side, line against line, each row tagged with how it changed."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[DiffRow] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [DiffRow("equal", x, y) for x, y in zip(a[i1:i2], b[j1:j2], strict=True)]
        else:
            for x, y in zip_longest(a[i1:i2], b[j1:j2]):
                kind = (
                    tag
                    if tag != "replace"
                    else "replace"
                    if x is not None and y is not None
                    else "delete"
                    if y is None
                    else "insert"
                )
                rows.append(DiffRow(kind, x or "", y or ""))
    return rows


def _version(text: str | None, versions: list[Criterion], default: Criterion) -> Criterion:
    if text and text.isdigit():
        for version in versions:
            if version.version == int(text):
                return version
    return default


@router.get("/criteria")
async def criteria_page(request: Request, viewer: Signed) -> Response:
    found = await _criteria(request).list_latest(viewer.project)
    return render(request, "criteria.html", {"criteria": [c.to_wire() for c in found]})


async def _criterion_context(request: Request, project: str, name: str) -> dict[str, Any]:
    versions = [c.to_wire() for c in await _criteria(request).versions(project, name)]
    latest = versions[-1]
    right = _version(request.query_params.get("b"), versions, latest)
    left = _version(request.query_params.get("a"), versions, versions[-2] if len(versions) > 1 else latest)
    return {
        "name": name,
        "versions": versions,
        "latest": latest,
        "left": left,
        "right": right,
        "diff": diff_lines(left.instructions, right.instructions),
        "verdict": None,
        "alignment": None,
        "form": {},
    }


@router.get("/criteria/{name}")
async def criterion_page(name: str, request: Request, viewer: Signed) -> Response:
    return render(request, "criterion.html", await _criterion_context(request, viewer.project, name))


async def _reply(request: Request, project: str, name: str, fragment: str, values: dict[str, Any]) -> Response:
    if is_fragment(request):
        return render(request, fragment, values)
    context = await _criterion_context(request, project, name)
    return render(request, "criterion.html", {**context, **values})


@router.post("/criteria/{name}/judge")
async def judge_by_hand(name: str, request: Request, viewer: Signed) -> Response:
    """One output judged by one version, as `POST /v1/criteria/judge` judges it."""
    form = await read_form(request)
    version = field(form, "version").strip()
    criterion = await _criteria(request).get(viewer.project, f"{name}@v{version}" if version.isdigit() else name)
    messages = []
    if field(form, "system").strip():
        messages.append({"role": "system", "content": field(form, "system")})
    if field(form, "input").strip():
        messages.append({"role": "user", "content": field(form, "input")})
    output = field(form, "output")
    if not output.strip():
        raise InvalidRequestError("Give the output to judge: the assistant's answer.", param="output")
    judge: Judge = request.app.state.judge
    verdict = await judge.judge(criterion, JudgeInput(messages=messages), JudgeOutput(content=output))
    values = {
        "verdict": verdict,
        "judged_by": criterion.ref,
        "form": {k: field(form, k) for k in ("system", "input", "output")},
    }
    return await _reply(request, viewer.project, name, "_verdict.html", values)


def _alignment_rows(text: str) -> list[Any]:
    """Labelled rows, one JSON object a line: `{"input": {"messages": [...]}, "output": {...}, "label": "PASS"}`;
    `output` may be the answer's text and `input` the user's message, for brevity."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"Line {number} of the labelled set is not JSON ({exc}).") from None
        if isinstance(row, dict):
            if isinstance(row.get("output"), str):
                row["output"] = {"role": "assistant", "content": row["output"]}
            if isinstance(row.get("input"), str):
                row["input"] = {"messages": [{"role": "user", "content": row["input"]}]}
        rows.append(row)
    if not rows:
        raise InvalidRequestError("Give at least one labelled row, one JSON object a line.", param="rows")
    if len(rows) > MAX_ALIGNMENT_ROWS:
        raise InvalidRequestError(f"Give at most {MAX_ALIGNMENT_ROWS} rows at a time.", param="rows")
    return rows


@router.post("/criteria/{name}/alignment")
async def alignment(name: str, request: Request, viewer: Signed) -> Response:
    """How often the judge agrees with people on a labelled set (FAIL the positive class), and where not."""
    form = await read_form(request)
    threshold_text = field(form, "threshold", "0.5").strip() or "0.5"
    try:
        threshold = float(threshold_text)
    except ValueError:
        raise InvalidRequestError(f"Invalid threshold {threshold_text!r}: give a number from 0 to 1.") from None
    body = validate(AlignmentRequest, {"rows": _alignment_rows(field(form, "rows")), "threshold": threshold})
    criterion = await _criteria(request).get(viewer.project, name)
    result = await align(request.app.state.judge, criterion, body)
    disagreements = [r for r in result.results if r.error is not None or r.verdict != r.label]
    values = {
        "alignment": result,
        "disagreements": disagreements,
        "form": {"rows": field(form, "rows"), "threshold": threshold_text},
    }
    return await _reply(request, viewer.project, name, "_alignment.html", values)
