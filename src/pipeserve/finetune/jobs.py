"""Fine-tuning in one process: the service the routes call, the trained models it serves, and the runner that
trains queued jobs, evaluates them, and keeps this process serving what the store says is DEPLOYED.

The server builds one in its lifespan (`load` before the engines start, `start` once they serve, `close` at
shutdown); `pipeserve models train` builds one without a server and evaluates on engines of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pipeserve.finetune.evaluate import evaluate
from pipeserve.finetune.runner import Progress, Runner
from pipeserve.finetune.service import TrainingService
from pipeserve.finetune.serving import TrainedModels, model_dir
from pipeserve.finetune.store import TrainedModel, TrainedModelStore
from pipeserve.service.chat import ChatService
from pipeserve.service.criteria import CriteriaService
from pipeserve.service.grading import Grader
from pipeserve.service.judge import Judge
from pipeserve.service.models import ModelRegistry
from pipeserve.service.serving import start_engines
from pipeserve.settings import Settings
from pipeserve.store.db import Database

log = logging.getLogger("pipeserve.finetune")

POLL_SECONDS = 2.0


class FineTuning:
    def __init__(self, settings: Settings, db: Database, criteria: CriteriaService | None = None) -> None:
        self.store = TrainedModelStore(db)
        self.serving = TrainedModels(settings)
        self.criteria = criteria
        self.service = TrainingService(self.store, lambda: self.serving.settings, criteria)
        self.runner: Runner | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def load(self) -> Settings:
        """The settings to start the engines with: the configured models and the DEPLOYED trained ones."""
        await self.serving.load(self.store)
        return self.serving.served_settings()

    def start(
        self, registry: ModelRegistry, chat: ChatService, grader: Grader | None, criteria: CriteriaService | None
    ) -> None:
        self.criteria = self.service.criteria = criteria

        async def deploy(model: TrainedModel) -> None:
            await self.serving.deploy(registry, model)

        async def judge(model: TrainedModel) -> dict[str, Any] | None:
            return await self.evaluate(model, chat, grader)

        self.runner = Runner(
            self.store,
            lambda: self.serving.settings,
            deploy=deploy,
            evaluate=judge,
            slots=self.serving.settings.finetune_max_jobs,
        )
        self._loop_task = asyncio.create_task(self._loop(registry), name="fine-tuning")

    async def _loop(self, registry: ModelRegistry) -> None:
        assert self.runner is not None
        while True:
            try:
                await self.serving.sync(registry, self.store)
                if self.runner.slots:
                    await self.runner.step()
            except Exception as exc:  # the store may be down for a while: try again on the next round
                log.warning("fine-tuning: %s", exc)
            await asyncio.sleep(POLL_SECONDS)

    async def evaluate(self, model: TrainedModel, chat: ChatService, grader: Grader | None) -> dict[str, Any]:
        """The model against its base on the TEST entries its job took from the dataset."""
        settings = self.serving.settings
        asked = (model.request.get("evaluation") or {}) if isinstance(model.request, dict) else {}
        limit = min(settings.finetune_eval_entries, asked.get("max_entries") or settings.finetune_eval_entries)
        path = model_dir(settings, model) / "test.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        entries = [json.loads(line) for line in lines[:limit] if line.strip()]
        if not entries:
            return {"status": "skipped", "reason": "the dataset had no TEST entries"}
        criteria = []
        if asked.get("criteria") and self.criteria is not None:
            criteria = await self.criteria.resolve(model.project, list(asked["criteria"]))
        return await evaluate(chat, grader, entries, base=model.base_model, tuned=model.served_id, criteria=criteria)

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(BaseException):
                await self._loop_task
        if self.runner is not None:
            await self.runner.close()
        self.serving.close()


@asynccontextmanager
async def local_engines(settings: Settings, model: TrainedModel) -> AsyncIterator[ChatService]:
    """Engines of this process for the configured models and one trained model: evaluating without a server."""
    trained = TrainedModels(settings)
    from pipeserve.finetune.serving import served_config

    config = served_config(settings, model)
    if config is not None:
        trained.configs[config.id] = config
    served, providers = await start_engines(trained.served_settings(), {})
    try:
        yield ChatService(ModelRegistry(served, providers))
    finally:
        for item in [*served, *providers]:
            await item.engine.close()


async def train_in_terminal(
    settings: Settings, db: Database, job: TrainedModel, on_progress: Progress, *, evaluate_after: bool = True
) -> TrainedModel | None:
    """Run `job` in this process when a slot is free (or follow it, when another process took it): the job's
    final row, or None if it was deleted."""
    fine_tuning = FineTuning(settings, db)
    criteria = CriteriaService(db, settings.default_judge_model)
    fine_tuning.criteria = criteria

    async def deploy(model: TrainedModel) -> None:
        return None  # the files are written: servers pick the model up when they see it DEPLOYED

    async def judge(model: TrainedModel) -> dict[str, Any] | None:
        if not evaluate_after:
            return {"status": "skipped", "reason": "--no-evaluation"}
        async with local_engines(settings, model) as chat:
            criteria.known_models = chat.models.serves
            return await fine_tuning.evaluate(model, chat, Grader(criteria, Judge(chat)))

    runner = Runner(
        fine_tuning.store,
        lambda: settings,
        deploy=deploy,
        evaluate=judge,
        slots=max(1, settings.finetune_max_jobs),
        on_progress=on_progress,
    )
    store = fine_tuning.store
    try:
        while True:
            current = await store.by_id(job.id)
            if current is None:
                return None
            done = current.status == "ERROR" or (
                current.status == "DEPLOYED" and (current.evaluation or {}).get("status") not in ("running", "pending")
            )
            if done and job.id not in runner.running:
                return current
            waiting = current.status == "PENDING" or (current.evaluation or {}).get("status") == "pending"
            if waiting:
                task = await runner.step(job.id)
                if task is not None:
                    with contextlib.suppress(Exception):
                        await task
                    continue
                # Another process holds the machine's training slots: wait for one.
                on_progress(current, {"phase": "waiting for a training slot"})
            else:  # another process runs it: show its progress
                on_progress(current, current.progress or {"phase": current.status.lower()})
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await runner.close()
