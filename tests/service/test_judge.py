"""The judge: its prompt, its score read from logprobs, and real judgements by the embedded model.

The 135M model is a weak judge: these tests check the behaviour (shapes, the score's derivation from the
verdict token's distribution, failures as error verdicts), never the quality of its judgements.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from pipeserve.engines import create_engine
from pipeserve.protocol.chat_completions import TokenLogprob, TopLogprob
from pipeserve.protocol.criteria import AlignmentRequest, JudgeRequest
from pipeserve.service.chat import ChatService
from pipeserve.service.criteria import Criterion
from pipeserve.service.judge import (
    VERDICT_SCHEMA,
    Judge,
    JudgeInput,
    JudgeOutput,
    align,
    judge_input,
    judge_messages,
    judge_output,
)
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.service.verdict import value_offset, verdict_score
from pipeserve.settings import Settings
from pipeserve.validation import validate

MODEL = "SmolLM2-135M-Instruct"
SETTINGS = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24, "seed": None}


def criterion(**changes: Any) -> Criterion:
    fields: dict[str, Any] = {
        "id": "crit_" + "1" * 32,
        "project": "p",
        "name": "polite",
        "version": 2,
        "description": "The answer is polite",
        "instructions": "PASS if the answer is polite and respectful; FAIL if it is rude.",
        "judge_model": MODEL,
        "judge_settings": SETTINGS,
    }
    return Criterion(**(fields | changes))


HI = JudgeInput(messages=[{"role": "user", "content": "Say hi"}])
RUDE = JudgeOutput(content="Go away, idiot.")
KIND = JudgeOutput(content="Hello! How can I help you today?")


# --- the score, on hand-made logprobs ---------------------------------------------------------------------


def token(text: str, logprob: float, top: list[tuple[str, float]] | None = None) -> TokenLogprob:
    alternatives = [TopLogprob(token=t, bytes=list(t.encode()), logprob=lp) for t, lp in (top or [(text, logprob)])]
    return TokenLogprob(token=text, bytes=list(text.encode()), logprob=logprob, top_logprobs=alternatives)


def answer(*pieces: TokenLogprob) -> list[TokenLogprob]:
    return [token('{"', 0.0), token("verdict", 0.0), token('":', 0.0), *pieces, token('", "explanation": "ok"}', 0.0)]


def test_the_value_of_a_key_is_found_by_structure_not_by_text() -> None:
    data = b'{"explanation": "the \\"verdict\\": \\"FAIL", "verdict": "PASS"}'
    assert data[value_offset(data, b"verdict") or 0 :].startswith(b"PASS")
    assert value_offset(b'{"verdict": {"x": "PASS"}}', b"verdict") is None
    assert value_offset(b'{"explanation": "x"}', b"verdict") is None


def test_score_sums_the_prefixes_of_each_verdict() -> None:
    top = [("P", math.log(0.4)), ("F", math.log(0.3)), ("FAIL", math.log(0.2)), ("PA", math.log(0.1))]
    score = verdict_score(answer(token(' "', 0.0), token("P", math.log(0.4), top), token("ASS", 0.0)))
    assert score == pytest.approx(0.5)


def test_score_reads_a_token_that_holds_the_opening_quote() -> None:
    top = [(' "F', math.log(0.6)), (' "PASS', math.log(0.3)), (' "P', math.log(0.05)), (" ", math.log(0.05))]
    tokens = answer(token(' "F', math.log(0.6), top), token("AIL", 0.0))
    assert verdict_score(tokens) == pytest.approx(0.35 / 0.95)


def test_a_verdict_missing_from_the_alternatives_gets_the_remaining_mass() -> None:
    tokens = answer(token(' "', 0.0), token("PASS", math.log(0.9), [("PASS", math.log(0.9))]))
    assert verdict_score(tokens) == pytest.approx(0.9)
    only = answer(token(' "', 0.0), token("PASS", 0.0, [("PASS", 0.0)]))
    assert verdict_score(only) == 1.0


def test_no_score_without_the_verdict_token() -> None:
    assert verdict_score([token('{"explanation": "x"}', 0.0)]) is None
    assert verdict_score(answer(token(' "', 0.0), token("X", 0.0))) is None


# --- the prompt -------------------------------------------------------------------------------------------


def test_the_prompt_shows_input_tools_and_output() -> None:
    request = validate(
        JudgeRequest,
        {
            "criterion_id": "polite",
            "input": {
                "messages": [
                    {"role": "system", "content": "Be nice."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"}], "name": "bob"},
                    {"role": "assistant", "tool_calls": [_call("c1", "weather", '{"city": "Paris"}')]},
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                ],
                "tools": [{"type": "function", "function": {"name": "weather", "description": "Forecast"}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
            },
            "output": {
                "role": "assistant",
                "content": [{"type": "text", "text": "It is sunny."}],
                "reasoning_content": "The tool said sunny.",
                "tool_calls": [_call("c2", "weather", '{"city": "Rome"}')],
            },
        },
    )
    system, user = judge_messages(criterion(), judge_input(request.input), judge_output(request.output))
    assert system["role"] == "system" and "PASS if the answer is polite" in system["content"]
    assert "polite — The answer is polite" in system["content"]
    text = user["content"]
    for expected in [
        "- weather: Forecast",
        '"name":"weather"',
        "### user, name: bob\nWeather?",
        '(tool call c1) weather({"city": "Paris"})',
        "### tool, answers call c1\nsunny",
        "## Reasoning\nThe tool said sunny.",
        "## Content\nIt is sunny.",
        '- weather({"city": "Rome"})',
    ]:
        assert expected in text
    assert text.index("# Input") < text.index("# Output")


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- real judgements --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def chat() -> AsyncIterator[ChatService]:
    config = Settings().models[0]
    engine = create_engine(config, max_waiting=64)
    await engine.start()
    yield ChatService(ModelRegistry([ServedModel(config=config, engine=engine)]))
    await engine.close()


async def test_a_judgement_has_a_score_and_an_explanation(chat: ChatService) -> None:
    verdict = await Judge(chat).judge(criterion(), HI, RUDE)
    assert verdict.status == "success", verdict.error_message
    assert verdict.score is not None and 0.0 <= verdict.score <= 1.0
    assert isinstance(verdict.explanation, str)
    assert verdict.error_code is None and verdict.error_message is None
    assert verdict.prompt_tokens > 50 and 0 < verdict.completion_tokens <= SETTINGS["max_tokens"]


async def test_the_score_is_the_verdict_tokens_probability_of_pass(chat: ChatService) -> None:
    judge = Judge(chat)
    verdict = await judge.judge(criterion(), HI, KIND)
    # The same request again (temperature 0, run alone): read the verdict token by hand.
    params = judge.request(criterion(), HI, KIND)
    assert params.response_format is not None and params.response_format.schema == VERDICT_SCHEMA
    assert params.logprobs and params.top_logprobs == 20
    completion = await chat.complete(params)
    content = completion.choices[0].message.content or ""
    assert orjson.loads(content)["verdict"] in ("PASS", "FAIL")
    assert content.startswith('{"verdict": "')  # verdict first
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    prefix = _prefix_tokens(logprobs.content)
    assert "".join(t.token for t in prefix) == '{"verdict": "', "the value starts on a token boundary for this model"
    at_value = logprobs.content[len(prefix)]
    alternatives = {alt.token: math.exp(alt.logprob) for alt in at_value.top_logprobs}
    passed = sum(p for t, p in alternatives.items() if t.startswith("P"))
    failed = sum(p for t, p in alternatives.items() if t.startswith("F"))
    assert passed + failed == pytest.approx(1.0, abs=1e-3)  # the grammar mask leaves only the two verdicts
    assert verdict.score == pytest.approx(passed / (passed + failed), abs=1e-6)
    assert 0.0 < verdict.score < 1.0  # a probability, not a 0/1 verdict


def _prefix_tokens(entries: list[TokenLogprob]) -> list[TokenLogprob]:
    out, text = [], ""
    for entry in entries:
        if len(text) >= len('{"verdict": "'):
            break
        out.append(entry)
        text += entry.token
    return out


async def test_judgements_run_concurrently(chat: ChatService) -> None:
    judge = Judge(chat)
    outputs = [JudgeOutput(content=f"Hello, friend number {i}!") for i in range(4)]
    verdicts = await asyncio.gather(*(judge.judge(criterion(), HI, output) for output in outputs))
    assert all(v.status == "success" and v.score is not None and 0 <= v.score <= 1 for v in verdicts)


async def test_tools_and_calls_can_be_judged(chat: ChatService) -> None:
    judged = JudgeInput(
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        tool_choice="auto",
    )
    output = JudgeOutput(tool_calls=[_call("c1", "weather", '{"city": "Paris"}')], reasoning_content="Use the tool.")
    verdict = await Judge(chat).judge(criterion(instructions="PASS if the right tool is called."), judged, output)
    assert verdict.status == "success" and verdict.score is not None


async def test_a_judge_model_that_is_not_served_is_an_error_verdict(chat: ChatService) -> None:
    verdict = await Judge(chat).judge(criterion(judge_model="gone"), HI, RUDE)
    assert verdict.status == "error" and verdict.score is None and verdict.explanation is None
    assert verdict.error_code == 404 and "polite@v2" in (verdict.error_message or "")
    assert "gone" in (verdict.error_message or "")
    assert (verdict.prompt_tokens, verdict.completion_tokens) == (0, 0)


async def test_a_prompt_beyond_the_context_is_an_error_verdict(chat: ChatService) -> None:
    verdict = await Judge(chat).judge(criterion(), HI, JudgeOutput(content="word " * 9000))
    assert verdict.status == "error" and verdict.error_code == 400
    assert "context length" in (verdict.error_message or "")


async def test_alignment_counts_fail_as_the_positive_class(chat: ChatService) -> None:
    rows = [
        {"output": {"role": "assistant", "content": "Hello! Nice to meet you."}, "label": "PASS"},
        {"output": {"role": "assistant", "content": "Shut up."}, "label": "FAIL"},
        {"output": {"role": "assistant", "content": "word " * 9000}, "label": "FAIL"},
    ]
    for threshold in (0.0, 1.0):
        request = validate(AlignmentRequest, {"rows": rows, "threshold": threshold})
        result = await align(Judge(chat), criterion(), request)
        assert (result.rows, result.judged, result.errors) == (3, 2, 1)
        assert result.criterion == "polite@v2" and result.results[2].error is not None
        assert result.results[2].error.code == 400 and result.results[2].score is None
        if threshold == 0.0:  # every score passes: no FAIL predicted
            assert result.confusion.model_dump() == {"true_fail": 0, "false_fail": 0, "true_pass": 1, "false_pass": 1}
            assert (result.precision, result.recall, result.f1) == (None, 0.0, 0.0)
        else:  # every score below 1 fails
            assert all(r.score is not None and r.score < 1.0 for r in result.results[:2])
            assert result.confusion.model_dump() == {"true_fail": 1, "false_fail": 1, "true_pass": 0, "false_pass": 0}
            assert (result.precision, result.recall) == (0.5, 1.0) and result.f1 == pytest.approx(2 / 3)
