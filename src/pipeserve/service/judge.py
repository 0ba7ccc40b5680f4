"""The judge: one criterion version applied to one completion, by a served model, as a scored verdict.

The judge model reads the criterion's instructions (system prompt) and the completion rendered as text
(user message), and answers `{"verdict": "PASS"|"FAIL", "explanation": "..."}` decoded under that JSON
schema, so a verdict can never be malformed. The score is the judge's probability of PASS, read from the
log-probabilities of the token where the verdict's value starts.

**Verdict first.** The schema puts `verdict` before `explanation`, on purpose:
- the verdict is always sampled inside the budget: when `max_tokens` runs out it is the explanation that
  is cut (the JSON still closed validly), never the verdict, so the score can always be read from a
  sampled token's distribution (text that closes a truncated document has no logprobs);
- the score is the model's belief given the input alone, not conditioned on one greedy explanation — an
  explanation written first mostly commits to an answer, which drives the score to 0 or 1 and hides the
  judge's uncertainty;
- the explanation then justifies the verdict it follows.
The cost is that the judge does not reason before it decides; a criterion whose judge needs that can put
"think about X" into its instructions, but the score stays the probability at the verdict.

**The score**, how it is read from the logprobs and why it is authoritative over the sampled verdict, is
`verdict`'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pipeserve.errors import PipeserveError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as chat_wire
from pipeserve.protocol import criteria as wire
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.service.chat import ChatService
from pipeserve.service.criteria import Criterion
from pipeserve.service.edge import to_params
from pipeserve.service.verdict import verdict_score
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.judge")

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["PASS", "FAIL"]},
        "explanation": {"type": "string"},
    },
    "required": ["verdict", "explanation"],
    "additionalProperties": False,
}
TOP_LOGPROBS = 20  # the verdict's alternatives read; engines offer fewer, we take what they offer
ALIGNMENT_CONCURRENCY = 32  # judgements of one alignment in flight at once: the engine batches them

SYSTEM_PROMPT = """You are a judge. You decide whether the output of an AI assistant meets a criterion.

Criterion: {name}{description}

Instructions:
{instructions}

You are shown the input the assistant was given and the output it produced. Answer with a JSON object: \
"verdict" is "PASS" if the output meets the criterion and "FAIL" if it does not; "explanation" says why in \
a sentence or two."""


@dataclass(frozen=True)
class JudgeInput:
    """What the judged completion was given: chat messages, and its tools and tool_choice if any (wire dicts)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


@dataclass(frozen=True)
class JudgeOutput:
    """The judged completion's assistant message (wire dicts for the calls)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    reasoning_content: str | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Verdict:
    status: Literal["success", "error"]
    score: float | None  # P(PASS), 0..1
    explanation: str | None
    error_code: int | None  # HTTP-like: 400 the judge's request can't run (context too long), 404 model, 500
    error_message: str | None
    prompt_tokens: int
    completion_tokens: int


def judge_input(value: wire.JudgeInput | None) -> JudgeInput:
    if value is None:
        return JudgeInput(messages=[])
    tool_choice = value.tool_choice
    return JudgeInput(
        messages=[m.model_dump(exclude_none=True) for m in value.messages],
        tools=[t.model_dump(exclude_none=True) for t in value.tools] if value.tools is not None else None,
        tool_choice=tool_choice.model_dump() if isinstance(tool_choice, chat_wire.NamedToolChoice) else tool_choice,
    )


def judge_output(message: chat_wire.AssistantMessage) -> JudgeOutput:
    content = message.content
    refusal = message.refusal
    if isinstance(content, list):
        texts = [part.text for part in content if isinstance(part, chat_wire.TextPart)]
        refusals = [part.refusal for part in content if isinstance(part, chat_wire.RefusalPart)]
        content = "\n".join(texts) if texts else None
        refusal = refusal or ("\n".join(refusals) if refusals else None)
    return JudgeOutput(
        content=content,
        tool_calls=[c.model_dump(exclude_none=True) for c in message.tool_calls] if message.tool_calls else None,
        function_call=message.function_call.model_dump() if message.function_call is not None else None,
        reasoning_content=message.reasoning_content,
        refusal=refusal,
    )


# --- rendering -------------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _text(content: Any) -> str:
    """Message content as text: strings as they are, parts joined, non-text parts named."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict):
                out.append(str(part))
            elif part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif part.get("type") == "refusal":
                out.append(f"(refusal) {part.get('refusal', '')}")
            else:
                out.append(f"[{part.get('type', 'part')}]")
        return "\n".join(out)
    return _json(content)


def _call(call: dict[str, Any]) -> str:
    function = call.get("function", call)
    return f"{function.get('name', '')}({function.get('arguments', '')})"


def _message(message: dict[str, Any]) -> str:
    role = str(message.get("role", "user"))
    labels = [role]
    if message.get("name"):
        labels.append(f"name: {message['name']}")
    if message.get("tool_call_id"):
        labels.append(f"answers call {message['tool_call_id']}")
    lines = [f"### {', '.join(labels)}"]
    text = _text(message.get("content"))
    if text:
        lines.append(text)
    if message.get("refusal"):
        lines.append(f"(refusal) {message['refusal']}")
    for call in message.get("tool_calls") or []:
        lines.append(f"(tool call {call.get('id', '')}) {_call(call)}")
    if message.get("function_call"):
        lines.append(f"(function call) {_call(message['function_call'])}")
    return "\n".join(lines)


def render_input(value: JudgeInput) -> str:
    parts = []
    if value.tools:
        tools = []
        for tool in value.tools:
            function = tool.get("function", tool)
            line = f"- {function.get('name', '')}"
            if function.get("description"):
                line += f": {function['description']}"
            if function.get("parameters") is not None:
                line += f"\n  parameters: {_json(function['parameters'])}"
            tools.append(line)
        parts.append("## Tools\n" + "\n".join(tools))
        choice = value.tool_choice if value.tool_choice is not None else "auto"
        parts.append("## Tool choice\n" + (choice if isinstance(choice, str) else _json(choice)))
    messages = "\n\n".join(_message(m) for m in value.messages) if value.messages else "(no messages)"
    parts.append("## Messages\n" + messages)
    return "\n\n".join(parts)


def render_output(value: JudgeOutput) -> str:
    parts = []
    if value.reasoning_content:
        parts.append("## Reasoning\n" + value.reasoning_content)
    if value.content is not None:
        parts.append("## Content\n" + value.content)
    if value.refusal:
        parts.append("## Refusal\n" + value.refusal)
    if value.tool_calls:
        parts.append("## Tool calls\n" + "\n".join(f"- {_call(c)}" for c in value.tool_calls))
    if value.function_call:
        parts.append("## Function call\n" + _call(value.function_call))
    return "\n\n".join(parts) if parts else "(empty)"


def judge_messages(criterion: Criterion, input: JudgeInput, output: JudgeOutput) -> list[dict[str, str]]:
    description = f" — {criterion.description}" if criterion.description else ""
    system = SYSTEM_PROMPT.format(name=criterion.name, description=description, instructions=criterion.instructions)
    user = f"# Input\n\n{render_input(input)}\n\n# Output\n\n{render_output(output)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- judging ---------------------------------------------------------------------------------------------


def _error(code: int, message: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> Verdict:
    return Verdict("error", None, None, code, message, prompt_tokens, completion_tokens)


class Judge:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    def request(self, criterion: Criterion, input: JudgeInput, output: JudgeOutput) -> ChatParams:
        """The judge's chat request; raises a `PipeserveError` when it can't be made (model not served)."""
        served = self.chat.models.resolve(criterion.judge_model)
        can = served.engine.capabilities
        settings = criterion.settings
        body: dict[str, Any] = {
            "model": criterion.judge_model,
            "messages": judge_messages(criterion, input, output),
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_completion_tokens": settings.max_tokens,
            "store": False,
        }
        if settings.seed is not None:
            body["seed"] = settings.seed
        if can.structured_output:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA},
            }
        if can.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = min(TOP_LOGPROBS, can.max_top_logprobs)
        return to_params(validate(ChatCompletionRequest, body))

    async def judge(self, criterion: Criterion, input: JudgeInput, output: JudgeOutput) -> Verdict:
        """A verdict, never an exception for a judge failure: that is a verdict with status `error`."""
        try:
            params = self.request(criterion, input, output)
            completion = await self.chat.complete(params)
        except PipeserveError as error:
            return _error(error.status_code, f"The judge {criterion.ref} failed: {error.message}")
        except Exception as exc:  # a bug or an engine crash must not fail the request being judged
            log.exception("judge %s failed", criterion.ref)
            return _error(500, f"The judge {criterion.ref} failed: {exc}")
        usage = completion.usage
        prompt_tokens = usage.prompt_tokens if usage is not None else 0
        completion_tokens = usage.completion_tokens if usage is not None else 0
        choice = completion.choices[0]
        content = choice.message.content or ""
        try:
            answer = orjson.loads(content)
            verdict = answer["verdict"]
            explanation = answer.get("explanation")
            if verdict not in ("PASS", "FAIL") or not isinstance(explanation, str | None):
                raise ValueError(verdict)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _error(
                500,
                f"The judge {criterion.ref} answered something that is not a verdict: {content[:200]!r}",
                prompt_tokens,
                completion_tokens,
            )
        score = None
        if choice.logprobs is not None and choice.logprobs.content:
            score = verdict_score(choice.logprobs.content)
        if score is None:  # an engine without logprobs: the verdict is all we know
            score = 1.0 if verdict == "PASS" else 0.0
        return Verdict("success", score, explanation, None, None, prompt_tokens, completion_tokens)


# --- alignment -------------------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


async def align(judge: Judge, criterion: Criterion, request: wire.AlignmentRequest) -> wire.Alignment:
    """Judge labelled rows and compare with the labels, FAIL being the positive class."""
    gate = asyncio.Semaphore(ALIGNMENT_CONCURRENCY)

    async def one(row: wire.AlignmentRow) -> Verdict:
        async with gate:
            return await judge.judge(criterion, judge_input(row.input), judge_output(row.output))

    verdicts = await asyncio.gather(*(one(row) for row in request.rows))
    confusion = {"true_fail": 0, "false_fail": 0, "true_pass": 0, "false_pass": 0}
    results = []
    for index, (row, verdict) in enumerate(zip(request.rows, verdicts, strict=True)):
        if verdict.status != "success" or verdict.score is None:
            error = wire.AlignmentError(code=verdict.error_code or 500, message=verdict.error_message or "")
            results.append(
                wire.AlignmentResult(
                    index=index, label=row.label, score=None, verdict=None, explanation=None, error=error
                )
            )
            continue
        predicted: wire.Label = "PASS" if verdict.score >= request.threshold else "FAIL"
        key = ("true_" if predicted == row.label else "false_") + predicted.lower()
        confusion[key] += 1
        results.append(
            wire.AlignmentResult(
                index=index,
                label=row.label,
                score=verdict.score,
                verdict=predicted,
                explanation=verdict.explanation,
            )
        )
    judged = sum(confusion.values())
    precision = _ratio(confusion["true_fail"], confusion["true_fail"] + confusion["false_fail"])
    recall = _ratio(confusion["true_fail"], confusion["true_fail"] + confusion["false_pass"])
    # F1 = 2TP / (2TP + FP + FN): defined (0 rather than null) as soon as either side saw a FAIL.
    f1 = _ratio(
        2 * confusion["true_fail"], 2 * confusion["true_fail"] + confusion["false_fail"] + confusion["false_pass"]
    )
    return wire.Alignment(
        criterion=criterion.ref,
        threshold=request.threshold,
        rows=len(request.rows),
        judged=judged,
        errors=len(request.rows) - judged,
        precision=precision,
        recall=recall,
        f1=f1,
        confusion=wire.Confusion(**confusion),
        results=results,
    )
