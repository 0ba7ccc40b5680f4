"""Options of the Anthropic engine: the keys of a `[[models]]` table beside `id`, `aliases` and `engine`."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Headers pipeserve sets itself: the key comes from `api_key_env` only, so that it never sits in a config file.
_OWN_HEADERS = frozenset({"x-api-key", "authorization", "anthropic-version", "content-type", "accept"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AnthropicOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        default="https://api.anthropic.com",
        description="Where the Anthropic Messages API answers; requests go to `<base_url>/v1/messages`.",
    )
    api_key_env: str = Field(
        default="ANTHROPIC_API_KEY",
        description="Name of the environment variable holding the Anthropic API key (the key itself never "
        "appears in the config, logs or errors). It must be set when the server starts.",
    )
    model: str | None = Field(
        default=None, description="The model's name at Anthropic (e.g. `claude-sonnet-4-5`). Default: the model id."
    )
    anthropic_version: str = Field(
        default="2023-06-01", description="The `anthropic-version` header sent with every request."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP headers for every request (e.g. `anthropic-beta`). The key goes through "
        "`api_key_env`, never here.",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to open a connection to Anthropic.")
    read_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Most seconds between two chunks of Anthropic's answer (it sends `ping` events while idle); "
        "past it the request fails with a 504 `upstream_timeout`.",
    )
    total_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Most seconds one upstream request may take from sending to its last event, retries "
        "included; past it the request fails with a 504 `upstream_timeout`.",
    )
    max_concurrent: int = Field(
        default=64,
        ge=1,
        description="Most requests in flight to Anthropic at once (each choice of an `n` > 1 request is one); "
        "more wait, up to the server's `max_queued_requests`, then get a 429.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per request, the first included: refused connections, 429, 5xx and 529 "
        "(overloaded) answers, and errors before the first content are retried, after Anthropic's "
        "`retry-after` or else an exponential backoff with full jitter, within `total_timeout`.",
    )
    default_max_tokens: int = Field(
        default=4096,
        ge=1,
        description="`max_tokens` sent when the client sets none (Anthropic requires one). With "
        "`thinking_budget` it includes the thinking tokens, so it must exceed the budget.",
    )
    thinking_budget: int | None = Field(
        default=None,
        ge=1024,
        description="Enables extended thinking with this many budget tokens (at least 1024): the thinking comes "
        "back as `reasoning_content`, within the request's `max_tokens`. Requests whose `max_tokens` is not above "
        "the budget, or whose `tool_choice` or `response_format` force a tool (Anthropic allows no thinking "
        "then), run without thinking.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (letters, digits, `_`), not {value!r}; "
                "put the key itself in that variable"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _no_own_headers(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(name for name in value if name.lower() in _OWN_HEADERS)
        if clash:
            raise ValueError(
                f"headers must not set {clash}: pipeserve sends them itself (the key from the variable "
                "named by api_key_env, the version from anthropic_version)"
            )
        return value

    @model_validator(mode="after")
    def _budget_fits(self) -> AnthropicOptions:
        if self.thinking_budget is not None and self.default_max_tokens <= self.thinking_budget:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must exceed thinking_budget "
                f"({self.thinking_budget}): Anthropic counts the thinking within max_tokens"
            )
        return self
