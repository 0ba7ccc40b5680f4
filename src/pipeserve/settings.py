"""The one settings class: TOML config file, then environment variables, then CLI flags."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"


class ModelConfig(BaseModel):
    """One served model. Keys other than those below are options of its engine (see docs/configuration.md)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The model id clients send in `model` and see in `GET /v1/models`.")
    aliases: list[str] = Field(
        default_factory=list, description="Other names that resolve to this model (e.g. `openpipe:<slug>`)."
    )
    engine: str = Field(
        default="llamacpp",
        description="Engine that runs the model: the name of a module under `pipeserve.engines` (`llamacpp`, "
        "`openai` for any OpenAI-compatible server, `anthropic`).",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models tried in order when this one fails before its answer starts (a 429 of a rate "
        "limit or of the upstream, 5xx, an upstream that can't be reached or times out): served ids, aliases "
        "or `prefix:<model>` ids of `[[providers]]`.",
    )

    @property
    def engine_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ProviderConfig(BaseModel):
    """One `[[providers]]` table: a prefix whose `prefix:<model>` ids route to one upstream. Keys other than
    those below are options of its engine, as in `[[models]]`."""

    model_config = ConfigDict(extra="allow")

    prefix: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The prefix: `openai` routes `openai:gpt-4o` to this upstream, asking it for `gpt-4o`. "
        "`openai`, `anthropic` and `gemini` have presets (see docs/configuration.md).",
    )
    engine: str = Field(default="openai", description="Engine that speaks to the upstream (`openai`, `anthropic`).")

    @property
    def engine_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# The providers the `openpipe` SDK sends ids for. Each is served when its key's variable is set, or when a
# `[[providers]]` table names its prefix (its keys then override these).
PROVIDER_PRESETS: dict[str, dict[str, Any]] = {
    "openai": {"engine": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
    "anthropic": {"engine": "anthropic", "base_url": "https://api.anthropic.com", "api_key_env": "ANTHROPIC_API_KEY"},
    # Google's OpenAI-compatible endpoint for Gemini.
    "gemini": {
        "engine": "openai",
        "base_url": "https://generativelanguage.googleapis.com/v1beta/openai",
        "api_key_env": "GEMINI_API_KEY",
    },
}


class Price(BaseModel):
    """What one model's tokens cost, in dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt: float = Field(default=0.0, ge=0, description="Dollars per million prompt tokens.")
    completion: float = Field(default=0.0, ge=0, description="Dollars per million completion tokens.")


class CriterionConfig(BaseModel):
    """One criterion (LLM-as-judge) of the config file, kept as the latest version of the project `default`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The criterion's name: a-z, 0-9, `_`, `-`.")
    description: str = Field(default="", max_length=2000, description="What the criterion is about, for people.")
    instructions: str = Field(
        min_length=1, max_length=20000, description="What the judge is told to check: when to PASS, when to FAIL."
    )
    judge_model: str | None = Field(
        default=None, description="The served model that judges (default: the embedded model, else the first)."
    )
    judge_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The judge's sampling: `temperature` (default 0), `top_p` (1), `max_tokens` (128), `seed`.",
    )

    @field_validator("judge_settings")
    @classmethod
    def _valid_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pipeserve.protocol.criteria import JudgeSettings

        return JudgeSettings.model_validate(value).model_dump()


class RateLimitRule(BaseModel):
    """One `[[rate_limits]]` table: limits on the chat completions of some keys on some models."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(
        default=None,
        description="Whose requests: a key's id (`key_…`) or name (keys sharing a name share the limits); `*`: "
        "each key separately (requests without a key, on a server without keys, count as one); omitted: all "
        "requests together.",
    )
    model: str | None = Field(
        default=None,
        description="Which model: a served model's id or alias; `*`: each model separately; omitted: all models "
        "together.",
    )
    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per minute (RPM).")
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens (prompt and completion) per minute (TPM): a request is admitted on an estimate "
        "(prompt characters / 4, plus `max_tokens` times `n`, or 256 times `n` when unset), then counted at its "
        "real usage.",
    )
    concurrent_requests: int | None = Field(default=None, ge=1, description="Requests in flight at once.")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitRule:
        if self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrent_requests is None:
            raise ValueError(
                "a [[rate_limits]] table needs requests_per_minute, tokens_per_minute or concurrent_requests"
            )
        return self


class ContentFilterRule(BaseModel):
    """One `[[content_filters]]` table: a content filter on the chat completions of a project and/or model."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(default=None, description="The project it covers; omitted: every project.")
    model: str | None = Field(
        default=None, description="The model it covers (an id, alias or `prefix:<model>` id); omitted: every model."
    )
    hate: Literal["low", "medium", "high", "off"] = Field(
        default="medium", description="Lowest severity of hate filtered (`off`: annotated, never filtered)."
    )
    self_harm: Literal["low", "medium", "high", "off"] = Field(
        default="medium", description="Lowest severity of self-harm filtered (`off`: annotated, never filtered)."
    )
    sexual: Literal["low", "medium", "high", "off"] = Field(
        default="medium", description="Lowest severity of sexual content filtered (`off`: annotated, never filtered)."
    )
    violence: Literal["low", "medium", "high", "off"] = Field(
        default="medium", description="Lowest severity of violence filtered (`off`: annotated, never filtered)."
    )
    jailbreak: bool = Field(
        default=True, description="Refuse prompts detected as jailbreak attempts (false: annotated only)."
    )


def _embedded_models() -> list[ModelConfig]:
    return [
        ModelConfig(
            id=EMBEDDED_MODEL_ID,
            aliases=["openpipe:smollm2-135m-instruct"],
            engine="llamacpp",
        )
    ]


class Settings(BaseSettings):
    """pipeserve's settings. Environment variables use the prefix `PIPESERVE_` (e.g. `PIPESERVE_PORT`)."""

    model_config = SettingsConfigDict(env_prefix="PIPESERVE_", extra="forbid", validate_default=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on. A non-loopback address needs at least one API key "
        "(`pipeserve keys create`).",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("pipeserve")),
        description="Directory for pipeserve's own data: the API key hashes and the default SQLite store.",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Where the llama.cpp engine keeps GGUF weights converted to the fastest faithful format for "
        "this CPU, with the measurements that chose it (see the model option `weights`). Default: `weights` in "
        "the user's cache directory (~/.cache/pipeserve on Linux), shared by every data directory of the user, so "
        "that the choice is measured once per machine rather than once per data directory.",
    )
    database_url: str | None = Field(
        default=None,
        description="Where logs, datasets and the response cache live: a SQLAlchemy URL such as "
        "`postgresql://user@host/db` or `sqlite:///path/pipeserve.db`. Default: `pipeserve.db` (SQLite, WAL) "
        "in `data_dir`. Migrations run at start-up.",
    )
    log_requests: bool = Field(
        default=True,
        description="Log chat completions when neither the `op-log-request` header nor the body's `store` "
        "says whether to.",
    )
    log_synchronous_commit: bool = Field(
        default=False,
        description="PostgreSQL: whether a request log's commit also waits for PostgreSQL to flush it to disk "
        "(`synchronous_commit`). Off, a log is committed once the server holds it in memory and in its WAL, as "
        "SQLite's WAL mode with synchronous=NORMAL does: it survives a crash or kill -9 of pipeserve, and a crash "
        "of the PostgreSQL server or its machine can lose the logs of the last moments (at most 3 x its "
        "`wal_writer_delay`, 0.6 s by default) without corrupting anything. On, each request also waits for the "
        "disk (~0.13 ms on a local SSD here, more on network storage). Datasets, criteria and every other write "
        "always wait for the flush.",
    )
    cache_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="How long a response stored by `op-cache: readWrite|writeOnly` can be served again.",
    )
    # --- while the store (the database) can't be reached: completions go on, their logs wait ---
    log_buffer_rows: int = Field(
        default=1000,
        ge=0,
        description="Request logs held in memory while the store can't be reached; beyond it they spill to "
        "`log-spill.jsonl` in `data_dir`. Held logs are written when the store is back, without a restart. Logs "
        "in memory are lost if the process is killed during an outage; 0 spills each one at once.",
    )
    log_spill_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="Largest size of the spill file; beyond it (and `log_buffer_rows`) further logs are dropped "
        "and counted (`pipeserve_log_dropped_rows_total` in `/metrics`). Spilled logs survive a restart. 0 "
        "disables the file.",
    )
    store_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a commit of request logs may take before the store counts as unreachable: the "
        "requests stop waiting for it, and their logs are held and retried.",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Token prices per model name (served or reported), as a TOML table "
        '`[prices."gpt-4o"] prompt = 2.5, completion = 10` in dollars per million tokens; logs record the '
        "cost. A served model's price covers its aliases; a model without a price has an unknown (null) cost.",
    )
    providers: list[ProviderConfig] = Field(
        default_factory=list,
        description="Upstreams that serve any model by name, as a TOML array of tables `[[providers]]` with "
        "`prefix`, `engine` and the engine's options: `prefix:<model>` ids route there with `<model>` passed "
        "on. The presets `openai`, `anthropic` and `gemini` are served when `OPENAI_API_KEY`, "
        "`ANTHROPIC_API_KEY` or `GEMINI_API_KEY` is set; a table with their prefix overrides their keys.",
    )
    models: list[ModelConfig] = Field(
        default_factory=_embedded_models,
        description="Served models, as a TOML array of tables `[[models]]` (or JSON in `PIPESERVE_MODELS`). "
        "Default: the embedded SmolLM2-135M-Instruct.",
    )
    criteria: list[CriterionConfig] = Field(
        default_factory=list,
        description="Criteria (LLM-as-judge), as a TOML array of tables `[[criteria]]` with `name`, "
        "`instructions`, and optionally `description`, `judge_model` (a served model; default: the embedded "
        "one, else the first) and `judge_settings = {temperature = 0, top_p = 1, max_tokens = 128, seed = 1}`. "
        "At start-up each becomes the latest version of that criterion in the project `default`: a changed "
        "entry is a new version, an unchanged one writes nothing; criteria made through the API are kept.",
    )
    max_queued_requests: int = Field(
        default=256,
        ge=0,
        description="Requests a model may hold waiting for a free sequence; beyond it the answer is 429 "
        "with `Retry-After`.",
    )
    # --- limits on what one request may ask; each beyond-limit request gets a 4xx that names the setting ---
    max_request_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; a larger one is refused with 413 while it is read (at once "
        "when its Content-Length says so). 2 MiB holds a full context of text for any served model.",
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=200,
        description="Deepest nesting of objects and arrays in a request body (also in `/report` payloads and "
        "tool schemas); deeper bodies get a 400 before any work on them.",
    )
    max_messages: int = Field(
        default=2048, ge=1, description="Most messages in one chat completion request (OpenAI's limit: 2048)."
    )
    max_tools: int = Field(
        default=128,
        ge=1,
        description="Most `tools` (or legacy `functions`) in one request, and most tool calls in one assistant "
        "message (OpenAI's limit: 128).",
    )
    max_stop_sequences: int = Field(default=4, ge=1, description="Most `stop` sequences (OpenAI's limit: 4).")
    max_filters: int = Field(
        default=64,
        ge=1,
        description="Most filters in one `/logs/update-metadata` or `/logs/update-tags` request, and most "
        "query parameters (`metadata.<key>` and `criteria.<name>` conditions among them) of one `GET /logs`.",
    )
    max_metadata_keys: int = Field(
        default=64,
        ge=1,
        description="Most keys of metadata or tags given at once: `op-tags`, `/report` tags and metadata, "
        "`/logs/update-metadata` and `/logs/update-tags`. A chat completion's `metadata` keeps OpenAI's limit "
        "of 16 pairs.",
    )
    engine_exit_after_seconds: float = Field(
        default=300.0,
        ge=0,
        description="A model's engine that has been unable to serve this long (stalled inside a step, or "
        "failing to restart) makes the server exit with status 70, so that a supervisor starts it afresh. "
        "0 never exits.",
    )
    # --- rate limits (service/rate_limits.py) ---
    rate_limits: list[RateLimitRule] = Field(
        default_factory=list,
        description="Rate limits of chat completions, as a TOML array of tables `[[rate_limits]]` with `key` (a "
        "key id or name, `*` for each key, omitted for all), `model` (a served model, `*` for each, omitted for "
        "all) and any of `requests_per_minute`, `tokens_per_minute`, `concurrent_requests`. Every table that "
        "matches a request applies; one reached is a 429 with `Retry-After` (see docs/api.md, *Rate limits*).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis that holds the rate limit counters, shared by every replica (`redis://host:6379/0`, "
        "`rediss://` for TLS). Unset: each process counts in its own memory. While Redis can't be reached, "
        "requests are admitted unchecked (see docs/deployment.md).",
    )
    redis_key_prefix: str = Field(
        default="pipeserve:", description="Prefix of every key pipeserve writes in Redis, to share one Redis."
    )
    redis_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How long a Redis call may take; beyond it Redis counts as unreachable and requests are "
        "admitted unchecked, retrying Redis every 2 seconds.",
    )

    @field_validator("rate_limits")
    @classmethod
    def _served_limits(cls, rules: list[RateLimitRule], info: ValidationInfo) -> list[RateLimitRule]:
        ids = {name: model.id for model in info.data.get("models", []) for name in (model.id, *model.aliases)}
        prefixes = {provider.prefix for provider in info.data.get("providers", [])} | set(PROVIDER_PRESETS)
        scopes: set[tuple[str | None, str | None]] = set()
        for rule in rules:
            model = rule.model
            if model not in (None, "*") and ids and model not in ids and model.partition(":")[0] not in prefixes:
                raise ValueError(
                    f"[[rate_limits]] names model {model!r}, which is neither a served model nor a "
                    "`prefix:<model>` id of [[providers]]; use the id or an alias of one of [[models]], or `*`"
                )
            scope = (rule.key, ids.get(rule.model, rule.model) if rule.model else None)  # an alias is its model
            if scope in scopes:
                raise ValueError(
                    f"two [[rate_limits]] tables have key {rule.key!r} and model {rule.model!r}; merge them into one"
                )
            scopes.add(scope)
        return rules

    # --- spoken answers (`audio`, pipeserve.audio) and content filtering (pipeserve.moderation) ---
    audio_engine: str = Field(
        default="espeak",
        description="Speech engine that speaks answers of requests with `audio`: a module under `pipeserve.audio` "
        "(`espeak`: eSpeak NG, offline, shipped by the `espeakng-loader` package).",
    )
    audio_ttl_seconds: int = Field(
        default=3600,
        ge=1,
        description="How long an answer's `audio.id` lasts (its `expires_at`): until then a later turn may refer "
        "to it instead of repeating the words.",
    )
    audio_store_entries: int = Field(
        default=100_000, ge=1, description="Most audio ids kept at once; beyond it the oldest are forgotten first."
    )
    content_filters: list[ContentFilterRule] = Field(
        default_factory=list,
        description="Content filters, as a TOML array of tables `[[content_filters]]` with `project` and `model` "
        "(each omitted: all) and the lowest severity filtered per category: `hate`, `self_harm`, `sexual`, "
        "`violence` (`low`, `medium` (default), `high`, `off`), and `jailbreak` (true: refuse detected attempts). "
        "The most specific table that matches a request applies; none: no filtering, and no filter results in "
        "responses (see docs/moderation.md).",
    )
    content_classifier: str = Field(
        default="linear",
        description="Classifier of the content filters: a module under `pipeserve.moderation` (`linear`: offline, "
        "needs the `moderation` extra: `pip install 'pipeserve[moderation]'`).",
    )
    log_level: str = Field(
        default="info",
        description="Log level of the server (debug, info, warning, error). At debug and info, `pipeserve serve` "
        "also writes uvicorn's access line for each request to standard output, in batches at most 50 ms late.",
    )
    omp_wait_policy: Literal["default", "passive", "active"] = Field(
        default="default",
        description="How llama.cpp's OpenMP threads wait between the operations of a step. `default`: libgomp's "
        "own way, spinning a moment and then sleeping (fastest measured, on a quiet machine and beside the "
        "benchmark's client alike: docs/benchmarks.md). `active`: spinning until there is work, as fast on a quiet "
        "machine. `passive`: sleeping at once, which made one sequence's decoding 2.6x slower on a quiet machine "
        "but was the fastest beside a busy process (W1 176 tok/s against 115 active and 92 default). Applied as "
        "OMP_WAIT_POLICY when the server starts, unless that variable is already set.",
    )
    # --- the web console (src/pipeserve/console) ---
    console: bool = Field(
        default=True,
        description="Serve the web console at `/`: the request log, datasets, criteria, models and a playground. "
        "While no API key exists it is open, as the API is; with keys it asks for one and shows that key's project.",
    )
    console_secret_file: Path | None = Field(
        default=None,
        description="File holding the secret that signs the console's session cookies, created (mode 0600) when "
        "missing. Default: `console-secret` in `data_dir`. Replicas behind one load balancer share one file, so "
        "that a sign-in works on each. Deleting it and restarting signs everyone out.",
    )
    console_session_hours: float = Field(
        default=12.0, gt=0, description="How long a console sign-in lasts before the key is asked for again."
    )
    # --- fine-tuning (src/pipeserve/finetune, docs/finetuning.md) ---
    finetune_dir: Path | None = Field(
        default=None,
        description="Where models trained here live (a GGUF file and Hugging Face weights each). Default: "
        "`fine-tunes` in `data_dir`. Replicas that share the store share this directory too, to serve each "
        "other's models.",
    )
    finetune_max_jobs: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Training jobs run at once on this machine (per fine-tunes directory); further jobs wait in "
        "the queue. 0: this server trains nothing, leaving its queue to another server or to "
        "`pipeserve models train`.",
    )
    finetune_threads: int | None = Field(
        default=None, ge=1, description="CPU threads a training job uses. Default: all cores."
    )
    finetune_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the training process: serving keeps priority on the CPUs while a model trains.",
    )
    finetune_gguf_type: Literal["Q8_0", "F16"] = Field(
        default="Q8_0",
        description="Format of the weights training changed in a trained model's GGUF file. Lower-bit formats "
        "are not offered: re-quantized to Q4_1, a fine-tune of SmolLM2-135M lost what it had learnt.",
    )
    finetune_max_sequences: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Sequences a trained model decodes together, each with its base model's window: its KV "
        "cache is this many windows (the base's default of 16 would hold ~380 MB for each SmolLM2 fine-tune).",
    )
    finetune_eval_entries: int = Field(
        default=200,
        ge=0,
        description="Most TEST entries a trained model is compared on with its base model (exact match, and "
        "the criteria a request names). 0: no evaluation.",
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            for name in [model.id, *model.aliases]:
                if name in seen:
                    raise ValueError(f"model name {name!r} is used twice; give every model a unique id and aliases")
                seen.add(name)
        if not models:
            raise ValueError("at least one model must be configured")
        return models

    @field_validator("criteria")
    @classmethod
    def _unique_criteria(cls, criteria: list[CriterionConfig]) -> list[CriterionConfig]:
        names = [criterion.name for criterion in criteria]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"criterion {name!r} is defined twice; give every criterion a unique name")
        return criteria

    @model_validator(mode="after")
    def _served_judges(self) -> Settings:
        served = {name for model in self.models for name in (model.id, *model.aliases)}
        for criterion in self.criteria:
            if criterion.judge_model is not None and criterion.judge_model not in served:
                raise ValueError(
                    f"criterion {criterion.name!r} is judged by {criterion.judge_model!r}, which is not a served "
                    "model; use the id or an alias of one of [[models]]"
                )
        return self

    @model_validator(mode="after")
    def _known_fallbacks(self) -> Settings:
        served = {name for model in self.models for name in (model.id, *model.aliases)}
        prefixes = {provider.prefix for provider in self.providers} | set(PROVIDER_PRESETS)
        for model in self.models:
            for fallback in model.fallbacks:
                if fallback in (model.id, *model.aliases):
                    raise ValueError(f"model {model.id!r} lists itself among its fallbacks; remove it")
                if fallback not in served and fallback.partition(":")[0] not in prefixes:
                    raise ValueError(
                        f"model {model.id!r} falls back to {fallback!r}, which is neither a served model nor a "
                        "`prefix:<model>` id of [[providers]]; use the id or an alias of one of [[models]]"
                    )
        names = [provider.prefix for provider in self.providers]
        for prefix in names:
            if names.count(prefix) > 1:
                raise ValueError(f"provider prefix {prefix!r} is defined twice; give every provider a unique prefix")
        return self

    def routed_providers(self, environ: Mapping[str, str]) -> list[ProviderConfig]:
        """The providers to serve: every `[[providers]]` table over its preset, if any, and the presets whose
        key's variable is set in `environ`."""
        configured = {provider.prefix: provider for provider in self.providers}
        routed = []
        for prefix, preset in PROVIDER_PRESETS.items():
            if prefix not in configured and environ.get(preset["api_key_env"]):
                routed.append(ProviderConfig(prefix=prefix, **preset))
        for provider in self.providers:
            preset = PROVIDER_PRESETS.get(provider.prefix, {})
            engine = provider.engine if "engine" in provider.model_fields_set else preset.get("engine", provider.engine)
            if preset and engine != preset["engine"]:
                preset = {}  # another engine: the preset's options would not fit it
            merged = {**preset, **provider.engine_options, "engine": engine}
            routed.append(ProviderConfig(prefix=provider.prefix, **merged))
        return routed

    @property
    def default_judge_model(self) -> str:
        """The judge of a criterion that names none: the embedded model if served, else the first model."""
        ids = [model.id for model in self.models]
        return EMBEDDED_MODEL_ID if EMBEDDED_MODEL_ID in ids else ids[0]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Settings from `config_file` (TOML), overridden by `PIPESERVE_*` variables, then by `overrides`."""
        if config_file is None:
            return cls(**overrides)
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=config_file)

        return _FromFile(**overrides)

    @property
    def store_url(self) -> str:
        """The database URL with its async driver (aiosqlite, asyncpg) filled in."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'pipeserve.db'}"
        for plain, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def weights_path(self) -> Path:
        return self.weights_dir or Path(platformdirs.user_cache_dir("pipeserve")) / "weights"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "keys.json"

    @property
    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
