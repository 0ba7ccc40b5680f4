"""Wire models of the criteria endpoints: OpenPipe's `POST /criteria/judge`, then our extensions.

OpenPipe has no public API to define criteria; ours (`/criteria`, `/criteria/{name}/versions`,
`/criteria/{name}/alignment`) keeps OpenPipe's vocabulary. The judge's input and output are the chat
completions models: they are what a chat completion was given and gave back.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from pipeserve.protocol.chat_completions import AssistantMessage, Message, NamedToolChoice, Tool, _Strict

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_ALIGNMENT_ROWS = 1000

Label = Literal["PASS", "FAIL"]

# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------


class JudgeSettings(_Strict):
    """How the judge model samples its verdict. Its logprobs are read before temperature, so the score is the
    model's own probability of PASS whatever the temperature."""

    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    top_p: Annotated[float, Field(ge=0, le=1)] = 1.0
    # The budget of the whole answer; the explanation is cut (the JSON still closed validly) when it runs out.
    max_tokens: Annotated[int, Field(ge=16, le=8192)] = 128
    seed: int | None = None


class CreateCriterionRequest(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: Annotated[str, Field(max_length=2000)] = ""
    instructions: Annotated[str, Field(min_length=1, max_length=20000)]
    judge_model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    judge_settings: JudgeSettings | None = None


class NewCriterionVersionRequest(_Strict):
    """Fields left out are copied from the latest version; `judge_settings` is merged key by key."""

    description: Annotated[str, Field(max_length=2000)] | None = None
    instructions: Annotated[str, Field(min_length=1, max_length=20000)] | None = None
    judge_model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    judge_settings: dict[str, float | int | None] | None = None


class JudgeInput(_Strict):
    messages: list[Message]
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None


class JudgeRequest(_Strict):
    criterion_id: Annotated[str, Field(min_length=1, max_length=200)]
    input: JudgeInput | None = None
    output: AssistantMessage


class AlignmentRow(_Strict):
    input: JudgeInput | None = None
    output: AssistantMessage
    label: Label


class AlignmentRequest(_Strict):
    rows: Annotated[list[AlignmentRow], Field(min_length=1, max_length=MAX_ALIGNMENT_ROWS)]
    # A score at or above the threshold is a PASS.
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


class Criterion(BaseModel):
    object: Literal["criterion"] = "criterion"
    id: str
    name: str
    version: int
    ref: str
    description: str
    instructions: str
    judge_model: str
    judge_settings: JudgeSettings
    created: str


class CriterionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Criterion]


class DeletedCriterion(BaseModel):
    id: str
    name: str
    object: Literal["criterion"] = "criterion"
    deleted: bool = True


class JudgeUsage(BaseModel):
    total_tokens: int
    # --- ours ---
    prompt_tokens: int
    completion_tokens: int


class JudgeResponse(BaseModel):
    score: float
    explanation: str | None
    usage: JudgeUsage
    # --- ours ---
    criterion: str  # the version that judged: "name@v3"


class Confusion(BaseModel):
    true_fail: int
    false_fail: int
    true_pass: int
    false_pass: int


class AlignmentError(BaseModel):
    code: int
    message: str


class AlignmentResult(BaseModel):
    index: int
    label: Label
    score: float | None
    verdict: Label | None  # the score against the threshold; null when the judge failed
    explanation: str | None
    error: AlignmentError | None = None


class Alignment(BaseModel):
    object: Literal["criterion.alignment"] = "criterion.alignment"
    criterion: str
    threshold: float
    rows: int
    judged: int
    errors: int
    # FAIL is the positive class: precision = of the outputs the judge failed, how many a human failed too.
    precision: float | None
    recall: float | None
    f1: float | None
    confusion: Confusion
    results: list[AlignmentResult]
