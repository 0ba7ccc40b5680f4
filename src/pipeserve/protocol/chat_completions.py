"""Wire models of `POST /chat/completions`: request, response and stream chunk.

Field order follows the API reference in shared/spec/chat-completions.md; OpenAI fields that the
reference does not list come after, and our own extensions are fenced in a marked block.
An explicit JSON `null` on an optional field always means "use the default".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# ---------------------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown fields and values of the wrong JSON type are errors, as in OpenAI's API."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Strict):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Strict):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantAudioRef(_Strict):
    id: str


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Strict):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: AssistantAudioRef | None = None
    annotations: list[dict[str, Any]] | None = None
    # Reasoning models' thinking, as returned in our responses; accepted back so a response can be replayed.
    reasoning_content: str | None = None


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Strict):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


class AudioParam(_Strict):
    format: str
    voice: str


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(_Strict):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionRequest(_Strict):
    messages: Annotated[list[Message], Field(min_length=1)]
    model: str
    audio: AudioParam | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    functions: list[FunctionDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stream_options: StreamOptions | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    # OpenAI fields that the OpenPipe reference does not list.
    seed: int | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprob(BaseModel):
    token: str
    bytes: list[int] | None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ResponseAudio(BaseModel):
    """The spoken answer of a request with `audio`: base64 audio in the requested format, and its words."""

    id: str
    data: str
    expires_at: int
    transcript: str


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ResponseToolCall] | None = None
    function_call: ResponseFunctionCall | None = None
    audio: ResponseAudio | None = Field(default=None, exclude_if=lambda v: v is None)  # only with `audio`
    # --- OpenPipe extension -------------------------------------------------------------------------------
    reasoning_content: str | None = None


FinishReason = Literal["stop", "length", "tool_calls", "function_call", "content_filter"]


class CriterionSuccess(BaseModel):
    """A judge's verdict on one choice: `score` is its probability of PASS."""

    status: Literal["success"] = "success"
    score: float
    explanation: str | None


class CriterionError(BaseModel):
    """The judge could not judge this choice; the completion itself is unaffected."""

    status: Literal["error"] = "error"
    errorCode: int
    errorMessage: str


CriterionResult = CriterionSuccess | CriterionError


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    # --- OpenPipe extension -------------------------------------------------------------------------------
    content_filter_results: dict[str, Any] = Field(default_factory=dict)
    criteria_results: dict[str, CriterionResult] = Field(default_factory=dict)  # by criterion name (op-criteria)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    text_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class CriterionUsage(BaseModel):
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
    # --- OpenPipe extensions: prompt cache counters, tokens the judges of op-criteria spent ----------------
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int
    criteria: dict[str, CriterionUsage] = Field(default_factory=dict)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: str | None = None
    # --- Azure OpenAI's extension, while a content filter applies: the prompt's classification -------------
    prompt_filter_results: list[dict[str, Any]] | None = Field(default=None, exclude_if=lambda v: v is None)


# ---------------------------------------------------------------------------------------------------------
# Stream chunks
# ---------------------------------------------------------------------------------------------------------


class _Sparse(BaseModel):
    """Stream deltas carry only the fields that changed, as OpenAI sends them."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class ChunkFunction(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(_Sparse):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction


class ChunkAudio(_Sparse):
    """Part of a streamed spoken answer: the id first, transcript and base64 pcm16 fragments, `expires_at` last."""

    id: str | None = None
    data: str | None = None
    expires_at: int | None = None
    transcript: str | None = None


class ChunkDelta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChunkToolCall] | None = None
    function_call: ChunkFunction | None = None
    audio: ChunkAudio | None = None
    # --- OpenPipe extension -------------------------------------------------------------------------------
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    # --- OpenPipe extension: the judges' results, in one chunk after the content (op-criteria) -------------
    criteria_results: dict[str, CriterionResult] | None = Field(default=None, exclude_if=lambda v: v is None)
    # --- Azure OpenAI's extension, while a content filter applies: the content so far, classified ----------
    content_filter_results: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    # --- Azure OpenAI's extension: the prompt's classification, in a first chunk without choices -----------
    prompt_filter_results: list[dict[str, Any]] | None = Field(default=None, exclude_if=lambda v: v is None)
