"""Criteria on chat completions (`op-criteria`): every choice judged by every criterion, Best-of-N.

The judges of all choices and criteria run at once (the engine batches them). A judge failure is an error
entry for that choice and criterion, never a failed request. With n > 1, choices are ordered by their mean
score over the requested criteria (an error counts as 0), best first, and renumbered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.criteria import CriteriaService, Criterion
from pipeserve.service.judge import Judge, JudgeInput, JudgeOutput, Verdict

HEADER = "op-criteria"


def requested_criteria(headers: Mapping[str, str]) -> list[str]:
    """The `op-criteria` header: a JSON array of criterion names, each optionally `@vN`."""
    raw = headers.get(HEADER)
    if raw is None or not raw.strip():
        return []
    try:
        refs = orjson.loads(raw)
    except orjson.JSONDecodeError:
        refs = None
    if not isinstance(refs, list) or not all(isinstance(ref, str) and ref for ref in refs):
        raise InvalidRequestError(
            f'The header \'{HEADER}\' must be a JSON array of criterion names, such as ["relevance", "tone@v2"].',
            param=HEADER,
        )
    return list(dict.fromkeys(refs))


@dataclass(frozen=True)
class Grades:
    """The verdicts on one completion: `verdicts[choice index][criterion name]`."""

    criteria: list[Criterion]
    verdicts: dict[int, dict[str, Verdict]]

    def results(self, index: int) -> dict[str, wire.CriterionResult]:
        return {name: _result(verdict) for name, verdict in self.verdicts.get(index, {}).items()}

    def usage(self) -> dict[str, wire.CriterionUsage]:
        out: dict[str, wire.CriterionUsage] = {}
        for criterion in self.criteria:
            prompt = sum(v[criterion.name].prompt_tokens for v in self.verdicts.values() if criterion.name in v)
            completion = sum(v[criterion.name].completion_tokens for v in self.verdicts.values() if criterion.name in v)
            out[criterion.name] = wire.CriterionUsage(
                total_tokens=prompt + completion, prompt_tokens=prompt, completion_tokens=completion
            )
        return out

    def mean_score(self, index: int) -> float:
        verdicts = self.verdicts.get(index, {})
        scores = [v.score if v.status == "success" and v.score is not None else 0.0 for v in verdicts.values()]
        return sum(scores) / len(scores) if scores else 0.0

    def apply(self, completion: wire.ChatCompletion, *, best_first: bool) -> wire.ChatCompletion:
        """The completion with each choice's results and the judges' usage; best first if asked (Best-of-N)."""
        choices = [
            choice.model_copy(update={"criteria_results": self.results(choice.index)}) for choice in completion.choices
        ]
        if best_first and len(choices) > 1:
            # sorted() is stable: equal means keep the engine's order
            choices = sorted(choices, key=lambda c: -self.mean_score(c.index))
            choices = [choice.model_copy(update={"index": position}) for position, choice in enumerate(choices)]
        usage = completion.usage.model_copy(update={"criteria": self.usage()})
        return completion.model_copy(update={"choices": choices, "usage": usage})


class Grader:
    def __init__(self, criteria: CriteriaService, judge: Judge) -> None:
        self.criteria = criteria
        self.judge = judge

    async def resolve(self, project: str, refs: list[str]) -> list[Criterion]:
        """The criteria to apply; an unknown one is a 400 before anything is generated."""
        return await self.criteria.resolve(project, refs) if refs else []

    async def grade(
        self, criteria: list[Criterion], request: Mapping[str, Any], completion: wire.ChatCompletion
    ) -> Grades:
        judged_input = _judge_input(request)
        work = [
            (choice.index, criterion, self.judge.judge(criterion, judged_input, _judge_output(choice.message)))
            for choice in completion.choices
            for criterion in criteria
        ]
        verdicts = await asyncio.gather(*(job for _, _, job in work))
        out: dict[int, dict[str, Verdict]] = {choice.index: {} for choice in completion.choices}
        for (index, criterion, _), verdict in zip(work, verdicts, strict=True):
            out[index][criterion.name] = verdict
        return Grades(criteria=criteria, verdicts=out)


def judgement_rows(completion: wire.ChatCompletion, criteria: Sequence[Criterion]) -> list[dict[str, Any]]:
    """`log_criteria` rows for a judged completion, under its final (Best-of-N) indices."""
    versions = {criterion.name: criterion.version for criterion in criteria}
    rows = []
    for choice in completion.choices:
        for name, result in choice.criteria_results.items():
            row: dict[str, Any] = {
                "choice_index": choice.index,
                "name": name,
                "version": versions[name],
                "status": result.status,
                "score": None,
                "explanation": None,
                "error_code": None,
                "error_message": None,
            }
            if isinstance(result, wire.CriterionSuccess):
                row |= {"score": result.score, "explanation": result.explanation}
            else:
                row |= {"error_code": result.errorCode, "error_message": result.errorMessage}
            rows.append(row)
    return rows


def _result(verdict: Verdict) -> wire.CriterionResult:
    if verdict.status == "success" and verdict.score is not None:
        return wire.CriterionSuccess(score=verdict.score, explanation=verdict.explanation)
    return wire.CriterionError(
        errorCode=verdict.error_code or 500, errorMessage=verdict.error_message or "the judge gave no verdict"
    )


def _judge_input(request: Mapping[str, Any]) -> JudgeInput:
    tools = request.get("tools")
    tool_choice = request.get("tool_choice")
    if tools is None and request.get("functions"):  # the legacy form, shown to the judge as tools
        tools = [{"type": "function", "function": f} for f in request["functions"]]
        tool_choice = request.get("function_call")
    return JudgeInput(messages=list(request.get("messages") or []), tools=tools, tool_choice=tool_choice)


def _judge_output(message: wire.ResponseMessage) -> JudgeOutput:
    return JudgeOutput(
        content=message.content,
        tool_calls=[call.model_dump(mode="json") for call in message.tool_calls] if message.tool_calls else None,
        function_call=message.function_call.model_dump(mode="json") if message.function_call else None,
        reasoning_content=message.reasoning_content,
        refusal=message.refusal,
    )
