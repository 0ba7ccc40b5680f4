"""`pipeserve models train|list|show|delete|download`: models trained here, on the store, no server needed.

`train` checks the request as `POST /models` does, then runs the job in this process with a progress bar
(steps, loss, time left), unless a server took it first (its progress is then shown) or `--detach` leaves it to
one. A server on the same store serves the model once it is DEPLOYED, without a restart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipeserve.commands.common import STORE_FLAGS, add_store_flags, load_settings, with_database
from pipeserve.errors import PipeserveError
from pipeserve.finetune.plan import Plan, shown
from pipeserve.finetune.service import TrainingService
from pipeserve.finetune.store import TrainedModel, TrainedModelStore
from pipeserve.protocol.models_api import CreateModelRequest
from pipeserve.service.criteria import CriteriaService
from pipeserve.settings import Settings
from pipeserve.store.db import Database
from pipeserve.validation import validate


def register(commands: Any) -> None:
    """Add the `models` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("models", help="Train models and manage trained ones.")
    sub = parser.add_subparsers(dest="models_command", required=True)

    train = sub.add_parser(
        "train", help="Fine-tune a model on a dataset's TRAIN entries, serve it as openpipe:SLUG, evaluate it."
    )
    train.add_argument("dataset_id")
    train.add_argument("--slug", required=True, help="The model's name: it answers to openpipe:SLUG.")
    train.add_argument(
        "--base-model", default=None, help="A served llama.cpp model or a trained slug (default: embedded)."
    )
    train.add_argument("--epochs", type=float, default=None, help="Passes over the TRAIN entries (default: auto).")
    train.add_argument("--batch-size", type=int, default=None, help="Examples per optimizer step (default: 8).")
    rate = train.add_mutually_exclusive_group()
    rate.add_argument("--learning-rate", type=float, default=None, help="The learning rate itself.")
    rate.add_argument("--learning-rate-multiplier", type=float, default=None, help="Times the default rate.")
    train.add_argument("--lora-rank", type=int, default=None, help="Rank of the LoRA adapters (default: 16).")
    train.add_argument("--lora-alpha", type=int, default=None, help="LoRA scaling alpha (default: twice the rank).")
    train.add_argument("--full", action="store_true", help="Train every weight rather than LoRA adapters.")
    train.add_argument("--max-length", type=int, default=None, help="Longest example in tokens (default: 2048).")
    train.add_argument("--seed", type=int, default=None, help="Seed of the shuffling and initialisation.")
    train.add_argument(
        "--preference", action="store_true", help="Also tune on the entries' rejected messages (DPO) after SFT."
    )
    train.add_argument("--no-sft", action="store_true", help="Only preference tuning (with --preference).")
    train.add_argument(
        "--criterion", action="append", default=[], help="A criterion judging both models in the evaluation."
    )
    train.add_argument("--no-evaluation", action="store_true", help="Skip the comparison with the base model.")
    train.add_argument("--detach", action="store_true", help="Queue the job and return: a server runs it.")
    train.set_defaults(handler=_train)

    listing = sub.add_parser("list", help="List the project's trained models: slug, status, base, dataset, created.")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="Print a trained model (status, progress, evaluation, weights) as JSON.")
    show.add_argument("slug")
    show.set_defaults(handler=_show)

    delete = sub.add_parser("delete", help="Delete a trained model: stop its job or stop serving it; its files go.")
    delete.add_argument("slug")
    delete.set_defaults(handler=_delete)

    download = sub.add_parser("download", help="Copy a trained model's weights: its GGUF file or HF directory.")
    download.add_argument("slug")
    download.add_argument("--format", dest="fmt", choices=("gguf", "hf"), default="gguf", help="Default: gguf.")
    download.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="File (gguf) or directory (hf) to write; default: SLUG.gguf or SLUG-hf.",
    )
    download.set_defaults(handler=_download)

    for command in sub.choices.values():
        add_store_flags(command)


def _service(db: Database, settings: Settings) -> TrainingService:
    return TrainingService(TrainedModelStore(db), lambda: settings, CriteriaService(db, settings.default_judge_model))


def _run(args: argparse.Namespace, work: Callable[[TrainingService, Settings, Database], Awaitable[int]]) -> int:
    settings = load_settings(args, STORE_FLAGS)

    async def on(db: Database) -> int:
        return await work(_service(db, settings), settings, db)

    try:
        return with_database(args, on)
    except PipeserveError as error:
        print(f"pipeserve: {error.message}", file=sys.stderr)
        return 1 if error.status_code == 404 else 2


def _request(args: argparse.Namespace) -> dict[str, Any]:
    sft: dict[str, Any] = {
        "num_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "learning_rate_multiplier": args.learning_rate_multiplier,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "full_fine_tuning": True if args.full else None,
        "max_length": args.max_length,
        "seed": args.seed,
    }
    config: dict[str, Any] = {"provider": "openpipe", "baseModel": args.base_model}
    sft = {key: value for key, value in sft.items() if value is not None}
    if args.no_sft:
        config["enable_sft"] = False
    elif sft:
        config["sft_hyperparameters"] = sft
    if args.preference:
        config["enable_preference_tuning"] = True
    body: dict[str, Any] = {
        "datasetId": args.dataset_id,
        "slug": args.slug,
        "trainingConfig": {key: value for key, value in config.items() if value is not None},
    }
    if args.criterion:
        body["evaluation"] = {"criteria": args.criterion}
    return body


class Bar:
    """One line on stderr, redrawn in place: the phase, then steps, loss, examples/s and time left."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.phase: Any = None
        self.printed = 0.0

    def __call__(self, model: TrainedModel, progress: dict[str, Any]) -> None:
        line = describe(progress)
        now = time.monotonic()
        if line == self.last or (not self.tty and now - self.printed < 10 and progress.get("phase") == self.phase):
            return
        self.phase = progress.get("phase")
        self.last, self.printed = line, now
        sys.stderr.write(("\r\033[K" if self.tty else "") + line + ("" if self.tty else "\n"))
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def describe(progress: dict[str, Any]) -> str:
    phase = str(progress.get("phase", ""))
    steps = progress.get("steps")
    if not steps:
        return f"{phase}..."
    step = int(progress.get("step", 0))
    width = 24
    filled = int(width * step / steps)
    left = int(progress.get("eta_seconds") or 0)
    return (
        f"{phase} [{'#' * filled}{'.' * (width - filled)}] {step}/{steps} steps  epoch {progress.get('epoch')}  "
        f"loss {progress.get('loss')}  {progress.get('examples_per_second')} ex/s  {left // 60}:{left % 60:02d} left"
    )


def _summary(model: TrainedModel) -> str:
    lines = [f"{model.served_id}: {model.status}"]
    if model.error_message:
        lines.append(f"error: {model.error_message}")
    evaluation = model.evaluation or {}
    if evaluation.get("status") == "done":
        lines.append(f"evaluation on {evaluation['test_entries']} TEST entries (exact match):")
        for key, result in evaluation["models"].items():
            scores = "".join(f", {name} {score}" for name, score in (result.get("criteria") or {}).items())
            lines.append(f"  {key:<10} {result['model']}: {result['exact_match']} ({result['matches']}){scores}")
    elif evaluation:
        lines.append(
            f"evaluation: {evaluation.get('status')} {evaluation.get('reason') or evaluation.get('error') or ''}"
        )
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    from pipeserve.finetune.jobs import train_in_terminal

    async def work(service: TrainingService, settings: Settings, db: Database) -> int:
        model = await service.create(args.project, validate(CreateModelRequest, _request(args)))
        print(f"Queued {model.served_id} ({model.id}).", file=sys.stderr)
        if args.detach:
            print(model.served_id)
            return 0
        bar = Bar()
        try:
            final = await train_in_terminal(settings, db, model, bar, evaluate_after=not args.no_evaluation)
        finally:
            bar.done()
        if final is None:
            print(f"pipeserve: {model.served_id} was deleted while it trained", file=sys.stderr)
            return 1
        print(_summary(final))
        return 0 if final.status == "DEPLOYED" else 1

    try:
        return _run(args, work)
    except KeyboardInterrupt:  # the runner has put the job back in the queue on its way out
        print("Stopped: the job waits in the queue again; `pipeserve models delete` removes it.", file=sys.stderr)
        return 130


def _list(args: argparse.Namespace) -> int:
    async def work(service: TrainingService, settings: Settings, db: Database) -> int:
        for model in await service.of_project(args.project):
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.created_at / 1000))
            print(f"{model.slug}\t{model.status}\t{model.base_model}\t{model.dataset_id}\t{created}")
        return 0

    return _run(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(service: TrainingService, settings: Settings, db: Database) -> int:
        model = await service.require(args.project, args.slug)
        shown_model = {
            "id": model.served_id,
            "status": model.status,
            "base_model": model.base_model,
            "dataset_id": model.dataset_id,
            "hyperparameters": shown(Plan.model_validate(model.plan)),
            "error_message": model.error_message,
            "progress": model.progress,
            "result": model.result,
            "evaluation": model.evaluation,
            "weights": [{"name": f.name, "path": str(f.path)} for f in service.weights(model)],
        }
        print(json.dumps(shown_model, indent=2))
        return 0

    return _run(args, work)


def _delete(args: argparse.Namespace) -> int:
    async def work(service: TrainingService, settings: Settings, db: Database) -> int:
        model = await service.delete(args.project, args.slug)
        print(f"Deleted {model.served_id}.")
        return 0

    return _run(args, work)


def _download(args: argparse.Namespace) -> int:
    async def work(service: TrainingService, settings: Settings, db: Database) -> int:
        model = await service.require(args.project, args.slug)
        files = [f for f in service.weights(model) if f.format == args.fmt]
        if not files:
            print(f"pipeserve: {model.served_id} is {model.status}: no {args.fmt} weights to copy", file=sys.stderr)
            return 2
        if args.fmt == "gguf":
            target = args.output or Path(f"{model.slug}.gguf")
            shutil.copyfile(files[0].path, target)
        else:
            target = args.output or Path(f"{model.slug}-hf")
            target.mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copyfile(file.path, target / file.path.name)
        print(target)
        return 0

    return _run(args, work)
