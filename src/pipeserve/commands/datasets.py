"""`pipeserve datasets list|create|add-from-logs|export`: the datasets service on the store, no server needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from pipeserve.commands.common import add_store_flags, with_database
from pipeserve.errors import PipeserveError
from pipeserve.protocol.datasets import CreateDatasetRequest, LogFilter
from pipeserve.service.datasets import DatasetService
from pipeserve.store.db import Database
from pipeserve.validation import validate


def register(commands: Any) -> None:
    """Add the `datasets` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("datasets", help="Manage fine-tuning datasets.")
    sub = parser.add_subparsers(dest="datasets_command", required=True)

    listing = sub.add_parser("list", help="List the project's datasets: id, name, entries, created.")
    listing.set_defaults(handler=_list)

    create = sub.add_parser("create", help="Create a dataset and print its id.")
    create.add_argument("name")
    create.set_defaults(handler=_create)

    from_logs = sub.add_parser(
        "add-from-logs",
        help="Add the project's successful chat completion logs to a dataset, oldest first; "
        "logs already in it are skipped.",
    )
    from_logs.add_argument("dataset_id")
    from_logs.add_argument("--model", default=None, help="Only logs of this model.")
    from_logs.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="Only logs whose metadata has this value (repeatable).",
    )
    from_logs.add_argument("--since", default=None, help="Only logs from this ISO 8601 time (UTC unless given) on.")
    from_logs.add_argument("--until", default=None, help="Only logs before this ISO 8601 time.")
    from_logs.add_argument("--limit", type=int, default=None, help="Read at most this many logs.")
    from_logs.add_argument(
        "--split", type=str.upper, choices=("TRAIN", "TEST"), default=None, help="Default: about 10%% TEST."
    )
    from_logs.set_defaults(handler=_add_from_logs)

    export = sub.add_parser("export", help="Write a dataset as JSONL in OpenAI's fine-tuning format.")
    export.add_argument("dataset_id")
    export.add_argument("--split", type=str.upper, choices=("TRAIN", "TEST"), default=None, help="Default: both.")
    export.add_argument(
        "--format",
        dest="fmt",
        choices=("sft", "preference"),
        default="sft",
        help="sft: {messages, tools}; preference: OpenAI's DPO format, for entries with a rejected_message.",
    )
    export.add_argument("-o", "--output", type=Path, default=None, help="The file to write (default: stdout).")
    export.set_defaults(handler=_export)

    for command in sub.choices.values():
        add_store_flags(command)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _run(args: argparse.Namespace, work: Callable[[DatasetService], Awaitable[int]]) -> int:
    async def on(db: Database) -> int:
        return await work(DatasetService(db))

    try:
        return with_database(args, on)
    except PipeserveError as error:
        print(f"pipeserve: {error.message}", file=sys.stderr)
        return 1 if error.status_code == 404 else 2


def _list(args: argparse.Namespace) -> int:
    async def work(service: DatasetService) -> int:
        for dataset in (await service.list_datasets(args.project)).data:
            print(f"{dataset.id}\t{dataset.name}\t{dataset.dataset_entry_count}\t{dataset.created}")
        return 0

    return _run(args, work)


def _create(args: argparse.Namespace) -> int:
    async def work(service: DatasetService) -> int:
        dataset = await service.create_dataset(args.project, validate(CreateDatasetRequest, {"name": args.name}))
        print(dataset.id)
        return 0

    return _run(args, work)


def _add_from_logs(args: argparse.Namespace) -> int:
    async def work(service: DatasetService) -> int:
        log_filter = validate(
            LogFilter,
            {
                "model": args.model,
                "from": args.since,
                "to": args.until,
                "metadata": dict(args.metadata) or None,
                "limit": args.limit,
                "split": args.split,
            },
        )
        result = await service.add_entries_from_logs(args.project, args.dataset_id, log_filter)
        for error in result.errors.data:
            print(f"pipeserve: {error.message}", file=sys.stderr)
        print(
            f"Added {result.entries_created} entries; skipped {result.skipped} logs (Anthropic reports, "
            f"cache hits, answers without a message, or already in the dataset); {len(result.errors.data)} errors."
        )
        return 0

    return _run(args, work)


def _export(args: argparse.Namespace) -> int:
    async def work(service: DatasetService) -> int:
        lines = await service.export(args.project, args.dataset_id, split=args.split, fmt=args.fmt)
        # The file is opened only once the dataset is known to exist, so a typo leaves no empty file behind.
        out: IO[bytes] = sys.stdout.buffer if args.output is None else args.output.open("wb")
        try:
            async for chunk in lines:
                out.write(chunk)
        finally:
            if args.output is None:
                out.flush()
            else:
                out.close()
        return 0

    return _run(args, work)
