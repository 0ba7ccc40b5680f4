"""The job runner: takes queued jobs one at a time (per slot), runs each in a worker process, and sees it
through to a served, evaluated model or an error with its reason.

A slot is a file lock in the fine-tunes directory, so `finetune_max_jobs` bounds the jobs of a machine whichever
processes (servers, `pipeserve models train`) run them. While a job runs, its runner beats (`heartbeat_at`)
every few seconds; a job whose runner stopped beating for a minute (killed, machine restarted) is queued again
by the next runner that looks, up to three starts. A job deleted while it runs is stopped within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from pipeserve.engines.llamacpp.options import LlamaCppOptions
from pipeserve.finetune.plan import Plan
from pipeserve.finetune.serving import fine_tunes_dir, model_dir
from pipeserve.finetune.spec import TrainingSpec
from pipeserve.finetune.store import TrainedModel, TrainedModelStore

log = logging.getLogger("pipeserve.finetune")

HEARTBEAT_SECONDS = 5.0
STALE_MS = 60_000
MAX_ATTEMPTS = 3

# What the runner does once a job's weights are written: serve the model (raises if it can't), then evaluate.
Deploy = Callable[[TrainedModel], Awaitable[None]]
Evaluate = Callable[[TrainedModel], Awaitable[dict[str, Any] | None]]
Progress = Callable[[TrainedModel, dict[str, Any]], None]


class JobFailed(Exception):
    pass


class JobGone(Exception):
    """The job was deleted, or is no longer this runner's (given to another after a stale heartbeat)."""


class Slot:
    """One of the machine's training slots: an exclusive lock on a file, released by the kernel if the
    process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def runner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _entry(row: Any) -> dict[str, Any]:
    entry = {"id": row.id, "messages": row.messages}
    for key in ("tools", "tool_choice", "response_format", "rejected_message"):
        value = getattr(row, key)
        if value is not None:
            entry[key] = value
    return entry


class Runner:
    def __init__(
        self,
        store: TrainedModelStore,
        settings: Callable[[], Any],
        *,
        deploy: Deploy,
        evaluate: Evaluate,
        slots: int,
        on_progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.settings = settings  # the latest Settings
        self.deploy = deploy
        self.evaluate_model = evaluate
        self.name = runner_name()
        root = fine_tunes_dir(settings())
        self.slots = [Slot(root / "slots" / f"{index}.lock") for index in range(slots)]
        self.on_progress = on_progress
        self.running: dict[str, asyncio.Task[None]] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}

    def free_slot(self) -> Slot | None:
        for slot in self.slots:
            if slot._file is None and slot.acquire():
                return slot
        return None

    async def step(self, job_id: str | None = None) -> asyncio.Task[None] | None:
        """Start one queued job (or `job_id`, if still queued) or one waiting evaluation, if a slot is free."""
        await self.store.recover(STALE_MS, MAX_ATTEMPTS)
        slot = self.free_slot()
        if slot is None:
            return None
        job = await self.store.claim(self.name, job_id)
        work: Callable[[TrainedModel], Awaitable[None]] = self.run
        if job is None:
            job = await self.store.claim_evaluation(self.name, job_id)
            work = self._evaluate
        if job is None:
            slot.release()
            return None
        task = asyncio.ensure_future(self._in_slot(slot, job, work))
        self.running[job.id] = task
        task.add_done_callback(lambda _: self.running.pop(job.id, None))
        return task

    async def _in_slot(self, slot: Slot, job: TrainedModel, work: Callable[[TrainedModel], Awaitable[None]]) -> None:
        try:
            await work(job)
        finally:
            slot.release()

    # --- one job -------------------------------------------------------------------------------------------

    async def run(self, job: TrainedModel) -> None:
        settings = self.settings()
        directory = model_dir(settings, job)
        try:
            spec = await self._prepare(job, directory)
            result = await self._train(job, spec, directory)
            spec.train_file.unlink(missing_ok=True)  # a copy of the dataset's entries: the store keeps them
            if not await self.store.update(job.id, self.name, progress={"phase": "deploying"}, result=result):
                raise JobGone
            fresh = await self.store.by_id(job.id)
            if fresh is None:
                raise JobGone
            try:
                await self.deploy(fresh)
            except Exception as exc:
                raise JobFailed(f"The model was trained but could not be served: {exc}") from exc
            evaluation = {"status": "running"} if settings.finetune_eval_entries else None
            done = {} if evaluation else {"runner": None}
            deployed = await self.store.update(
                job.id, self.name, status="DEPLOYED", progress=None, evaluation=evaluation, **done
            )
            if not deployed:
                raise JobGone
            log.info("trained model %s deployed", job.served_id)
        except JobGone:
            await self._stopped(job, directory)
            return
        except asyncio.CancelledError:
            await self._stopped(job, directory)
            raise
        except JobFailed as failure:
            await self._fail(job, directory, str(failure))
            return
        except Exception as exc:
            log.exception("training job %s failed", job.slug)
            await self._fail(job, directory, f"{type(exc).__name__}: {exc}")
            return
        if evaluation is not None:
            await self._evaluate(fresh)

    async def _evaluate(self, job: TrainedModel) -> None:
        try:
            evaluation = await self.evaluate_model(job)
        except Exception as exc:
            log.exception("evaluating %s failed", job.slug)
            evaluation = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        await self.store.update(job.id, self.name, evaluation=evaluation, runner=None)

    async def _stopped(self, job: TrainedModel, directory: Path) -> None:
        """The job was deleted (its files go), or this runner is shutting down (the job waits for the next)."""
        if await self.store.by_id(job.id) is None:
            shutil.rmtree(directory, ignore_errors=True)
            return
        with contextlib.suppress(Exception):
            await self.store.update(
                job.id, self.name, status="PENDING", runner=None, progress={"phase": "queued", "interrupted": True}
            )

    async def _fail(self, job: TrainedModel, directory: Path, message: str) -> None:
        for name in ("model.gguf", "hf", "train.jsonl", "test.jsonl"):
            path = directory / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        await self.store.update(job.id, self.name, status="ERROR", error_message=message, progress=None, runner=None)
        log.warning("training job %s failed: %s", job.slug, message)

    async def _prepare(self, job: TrainedModel, directory: Path) -> TrainingSpec:
        """The job's directory: its TRAIN entries (TEST ones for the evaluation) and the spec."""
        settings = self.settings()
        plan = Plan.model_validate(job.plan)
        base_gguf, base_hf = await self._base(job, plan)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        counts = await self._write_entries(job.dataset_id, directory)
        if counts["TRAIN"] == 0:
            raise JobFailed(
                f"Dataset {job.dataset_id} has no TRAIN entries any more (deleted since the model was created)."
            )
        return TrainingSpec(
            job_id=job.id,
            slug=job.slug,
            base_gguf=base_gguf,
            base_hf_dir=base_hf,
            chat_template=plan.base.options.get("chat_template"),
            method="full" if plan.method == "full" else "lora",
            lora_rank=plan.lora_rank or 16,
            lora_alpha=plan.lora_alpha or 32,
            max_length=plan.max_length,
            seed=plan.seed,
            sft=plan.sft,
            preference=plan.preference,
            gguf_type=settings.finetune_gguf_type,
            threads=settings.finetune_threads or 0,
            train_file=directory / "train.jsonl",
            output_dir=directory,
        )

    async def _base(self, job: TrainedModel, plan: Plan) -> tuple[Path, Path | None]:
        if plan.base.kind == "trained":
            base = await self.store.get(job.project, plan.base.model)
            if base is None or base.status != "DEPLOYED":
                raise JobFailed(f"The base model {plan.base.model} is no longer deployed here.")
            directory = model_dir(self.settings(), base)
            if not (directory / "model.gguf").is_file():
                raise JobFailed(f"The base model's weights ({directory}) are missing on this machine.")
            return directory / "model.gguf", directory / "hf"
        try:
            return LlamaCppOptions(**plan.base.options).resolved_path(), None
        except (FileNotFoundError, ValueError) as exc:
            raise JobFailed(f"The base model {plan.base.model} can't be read: {exc}") from exc

    async def _write_entries(self, dataset_id: str, directory: Path) -> dict[str, int]:
        counts = {"TRAIN": 0, "TEST": 0}
        files = {split: (directory / f"{split.lower()}.jsonl").open("w") for split in counts}
        try:
            async for row in self.store.entries(dataset_id):
                files[row.split].write(json.dumps(_entry(row)) + "\n")
                counts[row.split] += 1
            return counts
        finally:
            for handle in files.values():
                handle.close()

    async def _train(self, job: TrainedModel, spec: TrainingSpec, directory: Path) -> dict[str, Any]:
        (directory / "job.json").write_text(spec.model_dump_json(indent=2))
        settings = self.settings()
        env = {**os.environ, "PIPESERVE_TRAIN_NICE": str(settings.finetune_nice)}
        # OpenMP threads that spin while waiting made training ~5x slower beside other work on 2 cores.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with (directory / "train.log").open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pipeserve.finetune.worker",
                str(directory),
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                env=env,
                start_new_session=True,
            )
        self._processes[job.id] = process
        gone = asyncio.Event()
        beat = asyncio.ensure_future(self._beat(job, process, gone))
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if "progress" in message:
                    if not await self.store.update(job.id, self.name, progress=message["progress"]):
                        raise JobGone
                    if self.on_progress is not None:
                        self.on_progress(job, message["progress"])
                result = message.get("result", result)
                error = message.get("error", error)
            code = await process.wait()
        except BaseException:
            _kill(process)
            await process.wait()
            raise
        finally:
            beat.cancel()
            self._processes.pop(job.id, None)
        if gone.is_set():
            raise JobGone
        if code != 0 or result is None:
            raise JobFailed(
                error or f"The training process exited with status {code}: {_tail(directory / 'train.log')}"
            )
        return result

    async def _beat(self, job: TrainedModel, process: asyncio.subprocess.Process, gone: asyncio.Event) -> None:
        """Keep the job claimed while the worker is quiet (loading, exporting); stop it if it was deleted."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(Exception):  # the store may be down a moment: the next beat retries
                if not await self.store.update(job.id, self.name):
                    gone.set()
                    _kill(process)
                    return

    async def close(self) -> None:
        """Stop running jobs: each goes back to the queue (or away, if deleted meanwhile)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
