"""Wire models of the datasets endpoints: OpenPipe's `/datasets` API, then our extensions.

Entry messages, tools and response formats are the chat completions models: an entry is a conversation
that a chat completion could have had, so one definition serves both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from pipeserve.protocol.chat_completions import (
    AssistantMessage,
    Message,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    _Strict,
)

Split = Literal["TRAIN", "TEST"]

# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------


class CreateDatasetRequest(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]


class RejectedMessage(AssistantMessage):
    """The answer a preference-tuned model should not give; OpenPipe lets the role go unsaid."""

    role: Literal["assistant"] = "assistant"


class DatasetEntryInput(_Strict):
    messages: Annotated[list[Message], Field(min_length=1)]
    rejected_message: RejectedMessage | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    response_format: ResponseFormat | None = None
    split: Split | None = None
    metadata: dict[str, str] | None = None


class CreateDatasetEntriesRequest(_Strict):
    # Entries are validated one by one (`DatasetEntryInput`) so that one bad entry fails alone.
    entries: list[Any]


# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


class Dataset(BaseModel):
    object: Literal["dataset"] = "dataset"
    id: str
    name: str
    created: str
    updated: str
    dataset_entry_count: int
    fine_tune_count: int = 0


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Dataset]


class DeletedDataset(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    deleted: bool = True


class EntryCreationError(BaseModel):
    object: Literal["dataset.entries.creation.error"] = "dataset.entries.creation.error"
    entry_index: int
    message: str


class EntryCreationErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[EntryCreationError]


class DatasetEntriesCreated(BaseModel):
    object: Literal["dataset.entries.creation"] = "dataset.entries.creation"
    entries_created: int
    errors: EntryCreationErrors


# ---------------------------------------------------------------------------------------------------------
# --- pipeserve extensions ------------------------------------------------------------------------------------
# POST /datasets/{id}/entries/from-logs, GET /datasets/{id}, GET /datasets/{id}/entries,
# GET /datasets/{id}/export.
# ---------------------------------------------------------------------------------------------------------

MetadataValue = str | int | float | bool | None


class LogFilter(_Strict):
    """Which logs of the project become entries: successful chat completions, oldest first."""

    model: str | None = None
    # Default: 200, or no status at all in a report without an error.
    status_code: Annotated[int, Field(ge=200, le=299)] | None = None
    from_: int | str | None = Field(default=None, alias="from")
    to: int | str | None = None
    # A value matches the log's metadata value as stored (a string); null matches logs without the key.
    metadata: dict[str, MetadataValue] | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    split: Split | None = None


class DatasetEntriesFromLogs(DatasetEntriesCreated):
    # Logs that matched but did not become entries: Anthropic reports, cache hits, responses without a
    # choice, and logs already in the dataset.
    skipped: int


class DatasetEntry(BaseModel):
    object: Literal["dataset.entry"] = "dataset.entry"
    id: str
    created: str
    split: Split
    messages: list[dict[str, Any]]
    rejected_message: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    log_id: str | None = None


class DatasetEntryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetEntry]
    has_more: bool
    next_cursor: str | None = None


ExportFormat = Literal["sft", "preference"]
