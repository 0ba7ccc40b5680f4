"""A trained model against its base on the dataset's TEST entries: does it give the answers it was taught?

Both models answer each entry's conversation (its tools, tool_choice and response_format included) greedily,
through the same chat service that serves clients. An answer matches when it is the entry's answer: the same
text (trimmed), the same JSON value when both are JSON, or the same tool calls (names and parsed arguments).
Criteria named by the request judge both answers too, through the criteria machinery; their mean scores are
reported per model.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from pipeserve.errors import PipeserveError
from pipeserve.protocol import chat_completions as wire
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.service.chat import ChatService
from pipeserve.service.criteria import Criterion
from pipeserve.service.edge import to_params
from pipeserve.service.grading import Grader
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.finetune")

CONCURRENCY = 4  # requests in flight per model: the engine batches them
SAMPLES = 3  # answers shown side by side in the result


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


_NOT_JSON = object()


def _calls(calls: Any) -> list[tuple[Any, Any]]:
    out = []
    for call in calls or []:
        function = call.get("function") or {}
        arguments = _json(function.get("arguments") or "")
        out.append((function.get("name"), function.get("arguments") if arguments is _NOT_JSON else arguments))
    return out


def matches(expected: dict[str, Any], answer: dict[str, Any]) -> bool:
    """Whether `answer` (a response message) is the entry's expected assistant message."""
    if expected.get("tool_calls") or answer.get("tool_calls"):
        return _calls(expected.get("tool_calls")) == _calls(answer.get("tool_calls"))
    want = _text(expected.get("content")).strip()
    got = _text(answer.get("content")).strip()
    if want == got:
        return True
    parsed = _json(want)
    return parsed is not _NOT_JSON and _json(got) == parsed


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _request(entry: dict[str, Any], model: str, expected_chars: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": entry["messages"][:-1],
        "temperature": 0,
        # Room for the expected answer (a token is ~3 characters or more) and some: enough to match, not to ramble.
        "max_completion_tokens": min(2048, 32 + expected_chars // 2),
        "store": False,
    }
    for key in ("tools", "tool_choice", "response_format"):
        if entry.get(key) is not None:
            body[key] = entry[key]
    return body


async def _answer(chat: ChatService, body: dict[str, Any]) -> wire.ChatCompletion | str:
    try:
        return await chat.complete(to_params(validate(ChatCompletionRequest, body)))
    except PipeserveError as error:
        return error.message


async def evaluate(
    chat: ChatService,
    grader: Grader | None,
    entries: list[dict[str, Any]],
    *,
    base: str,
    tuned: str,
    criteria: list[Criterion],
) -> dict[str, Any]:
    """The comparison, as stored with the model and shown in `openpipe.evaluation`."""
    limit = asyncio.Semaphore(CONCURRENCY * 2)
    models = {"base": base, "fine_tuned": tuned}

    async def one(entry: dict[str, Any], model: str) -> tuple[wire.ChatCompletion | str, dict[str, float]]:
        expected = entry["messages"][-1]
        size = len(_text(expected.get("content"))) + len(json.dumps(expected.get("tool_calls") or []))
        body = _request(entry, model, size)
        async with limit:
            completion = await _answer(chat, body)
            scores: dict[str, float] = {}
            if criteria and grader is not None and not isinstance(completion, str):
                grades = await grader.grade(criteria, body, completion)
                for name, verdict in grades.verdicts.get(0, {}).items():
                    if verdict.status == "success" and verdict.score is not None:
                        scores[name] = verdict.score
        return completion, scores

    results = {key: await asyncio.gather(*(one(entry, model) for entry in entries)) for key, model in models.items()}
    out: dict[str, Any] = {"status": "done", "test_entries": len(entries), "models": {}, "samples": []}
    for key, model in models.items():
        matched = errors = 0
        sums: dict[str, list[float]] = {criterion.name: [] for criterion in criteria}
        for entry, (completion, scores) in zip(entries, results[key], strict=True):
            if isinstance(completion, str):
                errors += 1
                continue
            message = completion.choices[0].message.model_dump(mode="json", exclude_none=True)
            matched += matches(entry["messages"][-1], message)
            for name, score in scores.items():
                sums[name].append(score)
        summary: dict[str, Any] = {
            "model": model,
            "exact_match": round(matched / len(entries), 4) if entries else None,
            "matches": matched,
            "errors": errors,
        }
        if criteria:
            summary["criteria"] = {
                name: round(sum(values) / len(values), 4) if values else None for name, values in sums.items()
            }
        out["models"][key] = summary
    for index, entry in enumerate(entries[:SAMPLES]):
        sample: dict[str, Any] = {"expected": entry["messages"][-1].get("content")}
        for key in models:
            completion = results[key][index][0]
            sample[key] = completion if isinstance(completion, str) else completion.choices[0].message.content
        out["samples"].append(sample)
    return out
