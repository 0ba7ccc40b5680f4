"""Options of the `openai` engine: any OpenAI-compatible upstream (vLLM, SGLang, llama.cpp's llama-server,
OpenAI, another pipeserve). The keys of a `[[models]]` table beside `id`, `aliases` and `engine`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        default=None,
        description="The upstream's API base URL, the one before `/chat/completions` (e.g. "
        "`http://vllm:8000/v1`, `https://api.openai.com/v1`). Give this or `base_urls`.",
    )
    base_urls: list[str] = Field(
        default_factory=list,
        description="Replicas of the same upstream model: each request goes to the one that served its prompt's "
        "prefix before (so vLLM/SGLang prefix caches hit) unless it is much busier, down or failing; else to the "
        "least busy.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="The NAME of the environment variable holding the upstream's API key (sent as "
        "`Authorization: Bearer`), read at start-up; the key itself never appears in logs or errors. None: no key.",
    )
    model: str | None = Field(
        default=None, description="The model name the upstream serves. Default: this model's `id`."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP headers sent with every upstream request (e.g. `OpenAI-Organization`).",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields merged into every request body, under the request's own: the upstream's extensions "
        "(vLLM's `top_k`, `min_p`, `repetition_penalty`, `chat_template_kwargs = {enable_thinking = false}`).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection to the upstream.")
    read_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Most seconds the upstream may stay silent while streaming: before its first byte (its queue "
        "and the prefill) and between two chunks. Beyond it the request fails with 504 `upstream_timeout`. A plain "
        "(non-streamed) request is asked for a plain answer, which comes whole at the end: only `total_timeout` "
        "bounds it.",
    )
    total_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Most seconds for a whole request: every attempt, the backoffs between them and the "
        "streamed answer. Beyond it the request fails with 504 `upstream_timeout`.",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="Most client requests in flight to this model (all replicas together; a fan-out of `n` "
        "counts once); more wait, up to `max_queued_requests`, then get 429. None: no limit but the upstream's.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per request, the first included: refused connections, 429 and 5xx answers, and "
        "errors before the first content are retried (on another replica where there is one), with "
        "exponential backoff and full jitter, honouring `Retry-After`, within `total_timeout`.",
    )
    retry_base_delay: float = Field(
        default=0.25, ge=0, description="Seconds: the cap of the first retry's random backoff; it doubles per retry."
    )
    retry_max_delay: float = Field(default=8.0, ge=0, description="Seconds: the largest backoff between attempts.")
    breaker_threshold: int = Field(
        default=5,
        ge=1,
        description="Consecutive failures (5xx, refused or dropped connections, timeouts) after which a "
        "replica's circuit opens: it gets no requests until `breaker_cooldown` has passed, then one trial.",
    )
    breaker_cooldown: float = Field(
        default=30.0, gt=0, description="Seconds an open circuit waits before letting one trial request through."
    )
    health_interval: float = Field(
        default=15.0,
        ge=0,
        description="Seconds between health checks (`GET <base_url>/models`) of each replica; a replica that "
        "fails one gets no requests until one passes. 0: no health checks.",
    )
    affinity_prefix_chars: int = Field(
        default=2048,
        ge=0,
        description="Characters at the start of the prompt before its last message (tools, system prompt, "
        "earlier turns) that choose a replica by consistent (rendezvous) hashing, so that requests sharing them "
        "share a prefix cache. 0: least busy only.",
    )
    affinity_slack: int = Field(
        default=4,
        ge=0,
        description="Requests by which a prompt's affine replica may be busier than the least busy one before "
        "the request goes to the least busy instead.",
    )
    supports_n: bool = Field(
        default=True,
        description="The upstream honours `n`. False: a request with `n` > 1 becomes n upstream requests "
        "(each with `seed` + i when a seed is given), their choices renumbered and their usage summed.",
    )
    max_tokens_field: Literal["both", "max_completion_tokens", "max_tokens"] = Field(
        default="both",
        description="How `max_tokens` is sent: OpenAI's reasoning models take only `max_completion_tokens`, "
        "llama-server reads only `max_tokens`, vLLM and SGLang take either.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=1,
        description="The upstream's context window in tokens. Default: read at start-up from its "
        "`GET /models` (vLLM and SGLang report `max_model_len`); unknown otherwise.",
    )

    @field_validator("base_url", "base_urls", mode="after")
    @classmethod
    def _http(cls, value: str | list[str] | None) -> str | list[str] | None:
        for url in [value] if isinstance(value, str) else value or []:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> OpenAIOptions:
        if (self.base_url is None) == (not self.base_urls):
            raise ValueError("give the upstream's URL as `base_url`, or its replicas as `base_urls` (not both)")
        return self

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if self.base_url is not None else list(self.base_urls)
