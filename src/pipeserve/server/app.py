"""`create_app(settings)`: everything is built in the lifespan; nothing lives at module level."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pipeserve import __version__
from pipeserve.errors import UnsafeBindError
from pipeserve.finetune.jobs import FineTuning
from pipeserve.keys import KeyStore
from pipeserve.server.errors import install_error_handlers
from pipeserve.server.hotpath import PipeserveApp
from pipeserve.server.routes import chat, criteria, datasets, health, logs, models, trained_models
from pipeserve.service.cache import ResponseCache
from pipeserve.service.chat import ChatService
from pipeserve.service.completions import ChatCompletions
from pipeserve.service.criteria import CriteriaService, sync_config_criteria
from pipeserve.service.grading import Grader
from pipeserve.service.judge import Judge
from pipeserve.service.limits import Limits
from pipeserve.service.metrics import Metrics
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.service.rate_limits import RateLimiter
from pipeserve.service.recording import Recorder
from pipeserve.service.serving import Hangup, start_engines
from pipeserve.service.stages import Stage, Stages
from pipeserve.service.watchdog import EXIT_STATUS, watch_engines
from pipeserve.settings import Settings
from pipeserve.store.db import Database, open_database
from pipeserve.store.logwriter import LogWriter

log = logging.getLogger("pipeserve.server")

API_PREFIXES = ("/v1", "/api/v1")  # OpenAI's base path and OpenPipe's


def check_bind(settings: Settings, keys: KeyStore) -> None:
    if not settings.host_is_loopback and not keys.all():
        raise UnsafeBindError(
            f"refusing to listen on {settings.host} without an API key: anyone who can reach it could use "
            "the server. Create a key with `pipeserve keys create`, or listen on 127.0.0.1."
        )


def _key_name(keys: KeyStore, key_id: str) -> str | None:
    """A key's name, which `[[rate_limits]]` tables may use instead of its id."""
    return next((key.name for key in keys.all() if key.id == key_id and key.name), None)


def _exit(app: FastAPI) -> None:
    """Shut down as on SIGTERM (requests in flight finish, logs are written), then exit with `EXIT_STATUS`
    (`pipeserve serve` reads it from the app's state)."""
    app.state.exit_status = EXIT_STATUS
    os.kill(os.getpid(), signal.SIGTERM)


def build_stages(settings: Settings) -> Stages:
    """Content filtering (when `[[content_filters]]` are set), then speech (for requests with `audio`)."""
    from pipeserve.audio import AudioStore, Speaker, load_engine
    from pipeserve.audio.speech import AudioStage
    from pipeserve.moderation import load_classifier
    from pipeserve.moderation.filter import ContentFilterStage
    from pipeserve.moderation.policy import PolicyBook

    stages: list[Stage] = []
    if settings.content_filters:
        classifier = load_classifier(settings.content_classifier)
        stages.append(ContentFilterStage(classifier, PolicyBook(settings.content_filters)))
    speaker: Speaker | None = None
    try:
        speaker = Speaker(load_engine(settings.audio_engine))
    except (ImportError, OSError, RuntimeError) as exc:  # a broken speech engine must not stop the text models
        log.warning("speech engine %r unavailable (%s): requests with `audio` get a 400", settings.audio_engine, exc)
    stages.append(AudioStage(speaker, AudioStore(settings.audio_ttl_seconds, settings.audio_store_entries)))
    return Stages(stages)


def close_stages(stages: Stages) -> None:
    from pipeserve.audio.speech import AudioStage

    for stage in stages.stages:
        if isinstance(stage, AudioStage) and stage.speaker is not None:
            stage.speaker.close()


def create_app(settings: Settings, reload: Callable[[], Settings] | None = None) -> PipeserveApp:
    """`reload`: reads the settings again, for a reload on SIGHUP (`[[models]]` and `[[providers]]`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = KeyStore(settings.keys_file)
        check_bind(settings, keys)
        served: list[ServedModel] = []
        providers: list[ServedModel] = []
        registry: ModelRegistry | None = None
        hangup: Hangup | None = None
        db: Database | None = None
        writer: LogWriter | None = None
        watchdog: asyncio.Task[None] | None = None
        rate_limits: RateLimiter | None = None
        stages: Stages | None = None
        fine_tuning: FineTuning | None = None
        try:
            db = await open_database(
                settings.store_url,
                timeout=settings.store_timeout_seconds,
                log_synchronous_commit=settings.log_synchronous_commit,
            )
            writer = LogWriter(
                db,
                spill_path=settings.data_dir / "log-spill.jsonl",
                buffer_rows=settings.log_buffer_rows,
                spill_bytes=settings.log_spill_bytes,
                timeout=settings.store_timeout_seconds,
            )
            writer.start()
            # The models trained here and DEPLOYED are served beside the configured ones.
            fine_tuning = FineTuning(settings, db)
            served, providers = await start_engines(await fine_tuning.load(), os.environ)
            registry = ModelRegistry(served, providers)
            app.state.settings = settings
            app.state.limits = Limits.from_settings(settings)
            app.state.keys = keys
            app.state.models = registry
            app.state.metrics = Metrics(registry)
            app.state.metrics.watch_log_writer(writer)
            rate_limits = RateLimiter.from_settings(settings, lambda key_id: _key_name(keys, key_id))
            rate_limits.start()
            app.state.metrics.registry.register(rate_limits.collector())
            app.state.chat = ChatService(registry, app.state.metrics)
            app.state.db = db
            app.state.log_writer = writer
            app.state.recorder = Recorder(writer, settings.prices, registry.aliases)
            app.state.cache = ResponseCache(db, settings.cache_ttl_seconds)
            app.state.criteria = CriteriaService(db, settings.default_judge_model, registry.serves)
            app.state.judge = Judge(app.state.chat)
            await sync_config_criteria(app.state.criteria, settings)
            stages = build_stages(settings)
            grader = Grader(app.state.criteria, app.state.judge)
            app.state.completions = ChatCompletions(
                app.state.chat,
                app.state.recorder,
                app.state.cache,
                grader=grader,
                log_by_default=settings.log_requests,
                limits=app.state.limits,
                rate_limits=rate_limits,
                stages=stages,
            )
            if settings.engine_exit_after_seconds > 0:
                watchdog = asyncio.create_task(
                    watch_engines(registry, settings.engine_exit_after_seconds, lambda: _exit(app)), name="watchdog"
                )
            fine_tuning.start(registry, app.state.chat, grader, app.state.criteria)
            app.state.fine_tuning = fine_tuning
            if reload is not None:
                hangup = Hangup(registry, fine_tuning.serving.reloading(reload))
                hangup.install()
            yield
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if rate_limits is not None:
                await rate_limits.close()
            if hangup is not None:
                hangup.stop()
            if fine_tuning is not None:
                await fine_tuning.close()
            engines = [*(m.engine for m in served), *(p.engine for p in providers)]
            if registry is not None:
                engines += [engine for _, engine in registry.engines()]  # those a reload started
            for engine in {id(engine): engine for engine in engines}.values():
                await engine.close()
            if stages is not None:
                close_stages(stages)
            if writer is not None:
                await writer.close()
            if db is not None:
                await db.close()

    # No redirect for a trailing slash: OpenAI's API answers an unknown path with a 404 error, and a redirect
    # of a POST is not followed by every client.
    app = PipeserveApp(
        title="pipeserve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        hot_paths=frozenset(f"{prefix}/chat/completions" for prefix in API_PREFIXES),
    )
    install_error_handlers(app)
    for prefix in API_PREFIXES:
        app.include_router(chat.router, prefix=prefix)
        app.include_router(trained_models.router, prefix=prefix)  # before GET /models/{id}, which takes any path
        app.include_router(models.router, prefix=prefix)
        app.include_router(logs.router, prefix=prefix)
        app.include_router(datasets.router, prefix=prefix)
        app.include_router(criteria.router, prefix=prefix)
    app.include_router(health.router)
    if settings.console:  # after the API's routes, which keep precedence
        from pipeserve.console import console_router  # here: the console itself imports the server's modules

        app.include_router(console_router(settings))
    return app
