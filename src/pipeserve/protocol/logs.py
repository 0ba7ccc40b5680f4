"""Wire models of the logs endpoints.

OpenPipe's endpoints (`/report`, `/report-anthropic`, `/logs/update-metadata`, `/logs/update-tags`,
`/local-testing-only-get-latest-logged-call`) keep the camelCase names the `openpipe` SDK sends and reads.
Request bodies are strict: a wrong type is a 400 naming the field, never a silent coercion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# A tag as the SDK sends it; it is stored as the string `recording.tag_value` spells.
TagValue = str | int | float | bool | None


def _integral(value: Any) -> Any:
    # The SDK types statusCode as a float: 200.0 is the status 200, 200.5 is still an error.
    return int(value) if isinstance(value, float) and value.is_integer() else value


StatusCode = Annotated[int, BeforeValidator(_integral), Field(ge=0, le=999)]
# Bounds that keep a value inside its database column (BIGINT ms up to the year 9999, INTEGER status)
MAX_TIME_MS = 253_402_300_799_999
FilterValue = str | int | float | bool


class _Body(BaseModel):
    # strict: `"200"` is not a status code and `true` is not a timestamp; extra: a misspelt field is a 400
    model_config = ConfigDict(strict=True, extra="forbid")


class ReportRequest(_Body):
    """`POST /report`: a call made to some OpenAI-compatible API, reported after the fact."""

    requested_at: float | None = Field(
        None, alias="requestedAt", ge=0, le=MAX_TIME_MS, description="Unix time in milliseconds."
    )
    received_at: float | None = Field(
        None, alias="receivedAt", ge=0, le=MAX_TIME_MS, description="Unix time in milliseconds."
    )
    req_payload: Any = Field(None, alias="reqPayload")
    resp_payload: Any = Field(None, alias="respPayload")
    status_code: StatusCode | None = Field(None, alias="statusCode")
    error_message: str | None = Field(None, alias="errorMessage")
    tags: dict[str, TagValue] = Field(default_factory=dict)


class ReportAnthropicRequest(_Body):
    """`POST /report-anthropic`: a call made to Anthropic's messages API."""

    requested_at: float | None = Field(None, alias="requestedAt", ge=0, le=MAX_TIME_MS)
    received_at: float | None = Field(None, alias="receivedAt", ge=0, le=MAX_TIME_MS)
    req_payload: Any = Field(None, alias="reqPayload")
    resp_payload: Any = Field(None, alias="respPayload")
    status_code: StatusCode | None = Field(None, alias="statusCode")
    error_message: str | None = Field(None, alias="errorMessage")
    metadata: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, TagValue] = Field(default_factory=dict)


class ReportResponse(BaseModel):
    status: Literal["ok", "error"] = "ok"


class LogFilterItem(_Body):
    field: str = Field(description="`model`, `completionId`, `metadata.<key>` (or `tags.<key>`).")
    equals: FilterValue


class UpdateMetadataRequest(_Body):
    filters: list[LogFilterItem]
    metadata: dict[str, str | None]


class UpdateTagsRequest(_Body):
    filters: list[LogFilterItem]
    tags: dict[str, TagValue]


class UpdateResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    matched_logs: int = Field(alias="matchedLogs")


class LatestLoggedCall(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    created_at: datetime = Field(alias="createdAt")
    cache_hit: bool = Field(alias="cacheHit")
    status_code: int | None = Field(alias="statusCode")
    error_message: str | None = Field(alias="errorMessage")
    req_payload: Any = Field(alias="reqPayload")
    resp_payload: Any = Field(alias="respPayload")
    tags: dict[str, str | None]
    metadata: dict[str, str | None]


# --- pipeserve's own: GET /logs and GET /logs/{id} ---------------------------------------------------------


class LogUsage(BaseModel):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class Log(BaseModel):
    id: str
    object: Literal["log"] = "log"
    source: str  # chat | report | report-anthropic
    completion_id: str | None
    model: str | None
    requested_at: str  # ISO 8601, UTC, millisecond precision
    received_at: str | None
    time_to_first_token_ms: float | None
    duration_ms: float | None
    status_code: int | None
    error_message: str | None
    request: Any
    response: Any
    usage: LogUsage | None
    cost: float | None  # in the currency of the configured prices; null when the model has no price
    cache_hit: bool
    metadata: dict[str, str]
    tags: dict[str, Any]


class LogList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Log]
    has_more: bool
    next_cursor: str | None
