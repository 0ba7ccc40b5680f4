"""`pipeserve logs list|show|export`: read the request log straight from the store, no server needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from pipeserve.commands.common import add_store_flags, with_database
from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import logs as wire
from pipeserve.service import logs as service
from pipeserve.service.log_filters import LogFilter
from pipeserve.service.values import parse_time
from pipeserve.store.db import Database

PREVIEW_CHARS = 60


def register(commands: Any) -> None:
    """Add the `logs` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("logs", help="List, show and export request logs.")
    sub = parser.add_subparsers(dest="logs_command", required=True)

    listing = sub.add_parser("list", help="One line per log, newest first: id, time, model, status, tokens, preview.")
    _add_filter_flags(listing)
    listing.add_argument("--limit", type=int, default=50, help="How many logs to list (default: 50).")

    show = sub.add_parser("show", help="Print one log as JSON.")
    show.add_argument("log_id")

    export = sub.add_parser("export", help="Write the matching logs as JSON Lines, newest first.")
    _add_filter_flags(export)
    export.add_argument("--limit", type=int, default=None, help="At most this many logs (default: all).")
    export.add_argument("-o", "--output", type=Path, default=None, help="File to write (default: stdout).")

    for command in (listing, show, export):
        add_store_flags(command)
    parser.set_defaults(handler=_run)


def _add_filter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="Only logs of this model.")
    parser.add_argument("--status", type=int, default=None, help="Only logs with this HTTP status code.")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Only logs whose metadata has KEY set to VALUE; repeat to require several.",
    )
    parser.add_argument("--since", default=None, help="Only logs requested at or after this ISO time or Unix ms.")
    parser.add_argument("--until", default=None, help="Only logs requested before this ISO time or Unix ms.")


def _run(args: argparse.Namespace) -> int:
    try:
        if args.logs_command == "show":
            log = with_database(args, lambda db: service.get_log(db, args.project, args.log_id))
            if log is None:
                print(
                    f"pipeserve: no log {args.log_id} in project {args.project!r}; `pipeserve logs list` shows them",
                    file=sys.stderr,
                )
                return 1
            sys.stdout.write(log.model_dump_json(indent=2) + "\n")
            return 0
        flt = _filter(args)
        if args.limit is not None and args.limit < 1:
            raise InvalidRequestError("--limit must be at least 1.")
        if args.logs_command == "list":
            with_database(args, lambda db: _list(db, args.project, flt, args.limit, sys.stdout))
        else:
            if args.output is None:
                with_database(args, lambda db: _export(db, args.project, flt, args.limit, sys.stdout))
            else:
                with args.output.open("w", encoding="utf-8") as out:
                    count = with_database(args, lambda db: _export(db, args.project, flt, args.limit, out))
                print(f"Wrote {count} logs to {args.output}.", file=sys.stderr)
    except InvalidRequestError as exc:
        print(f"pipeserve: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _filter(args: argparse.Namespace) -> LogFilter:
    metadata: dict[str, str] = {}
    for pair in args.metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"--metadata takes KEY=VALUE, not {pair!r}.")
        metadata[key] = value
    return LogFilter(
        model=args.model,
        status_code=args.status,
        since=None if args.since is None else parse_time(args.since, "--since"),
        until=None if args.until is None else parse_time(args.until, "--until"),
        metadata=metadata,
    )


async def _list(db: Database, project: str, flt: LogFilter, limit: int, out: IO[str]) -> None:
    async for log in service.iter_logs(db, project, flt, limit=limit):
        out.write(_line(log) + "\n")


async def _export(db: Database, project: str, flt: LogFilter, limit: int | None, out: IO[str]) -> int:
    count = 0
    async for log in service.iter_logs(db, project, flt, limit=limit):
        out.write(log.model_dump_json() + "\n")
        count += 1
    return count


def _line(log: wire.Log) -> str:
    tokens = "-" if log.usage is None else f"{log.usage.prompt_tokens or 0}+{log.usage.completion_tokens or 0}"
    status = "-" if log.status_code is None else str(log.status_code)
    return "\t".join([log.id, log.requested_at, log.model or "-", status, tokens, preview(log)])


def preview(log: wire.Log) -> str:
    """The start of the answer (OpenAI or Anthropic shape), else the error, else the last request message."""
    text = _answer(log.response) or log.error_message or _last_message(log.request) or ""
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _answer(response: Any) -> str | None:
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return _text(message.get("content")) or _tool_calls(message.get("tool_calls"))
    return _text(response.get("content"))


def _last_message(request: Any) -> str | None:
    messages = request.get("messages") if isinstance(request, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return _text(messages[-1].get("content"))
    return None


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [str(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(parts) or None
    return None


def _tool_calls(calls: Any) -> str | None:
    if not isinstance(calls, list) or not calls:
        return None
    return orjson.dumps(calls).decode()
