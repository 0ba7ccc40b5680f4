"""`pipeserve criteria list|show|versions|create|new-version|delete`: criteria in the store, no server needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pipeserve.commands.common import STORE_FLAGS, add_store_flags, load_settings, with_database
from pipeserve.errors import PipeserveError
from pipeserve.protocol.criteria import CreateCriterionRequest, NewCriterionVersionRequest
from pipeserve.service.criteria import CriteriaService, Criterion
from pipeserve.store.db import Database
from pipeserve.validation import validate


def register(commands: Any) -> None:
    """Add the `criteria` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("criteria", help="Manage criteria (LLM-as-judge).")
    sub = parser.add_subparsers(dest="criteria_command", required=True)

    listing = sub.add_parser("list", help="List the latest version of each criterion: ref, judge model, id, created.")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="Print a criterion (NAME: its latest version, or NAME@vN) as JSON.")
    show.add_argument("name")
    show.set_defaults(handler=_show)

    versions = sub.add_parser("versions", help="List every version of a criterion, oldest first.")
    versions.add_argument("name")
    versions.set_defaults(handler=_versions)

    create = sub.add_parser("create", help="Create a criterion (version 1) and print its ref and id.")
    create.add_argument("name")
    create.add_argument("--instructions", required=True, help="What the judge checks: when to PASS, when to FAIL.")
    _version_flags(create)
    create.set_defaults(handler=_create)

    new_version = sub.add_parser(
        "new-version", help="Write the next version of a criterion: the latest one with the given fields changed."
    )
    new_version.add_argument("name")
    new_version.add_argument("--instructions", default=None, help="New instructions.")
    _version_flags(new_version)
    new_version.set_defaults(handler=_new_version)

    delete = sub.add_parser("delete", help="Delete a criterion (all its versions; judged logs keep naming them).")
    delete.add_argument("name")
    delete.set_defaults(handler=_delete)

    for command in sub.choices.values():
        add_store_flags(command)


def _version_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description", default=None, help="What the criterion is about, for people.")
    parser.add_argument(
        "--judge-model", default=None, help="The served model that judges (default: the embedded model)."
    )
    parser.add_argument("--temperature", type=float, default=None, help="The judge's temperature (default 0).")
    parser.add_argument("--top-p", type=float, default=None, help="The judge's top_p (default 1).")
    parser.add_argument("--max-tokens", type=int, default=None, help="The judge's answer budget (default 128).")
    parser.add_argument("--seed", type=int, default=None, help="The judge's seed.")


def _judge_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    given = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
    }
    settings = {key: value for key, value in given.items() if value is not None}
    return settings or None


def _run(args: argparse.Namespace, work: Callable[[CriteriaService], Awaitable[int]]) -> int:
    settings = load_settings(args, STORE_FLAGS)
    served = {name for model in settings.models for name in (model.id, *model.aliases)}

    async def on(db: Database) -> int:
        return await work(CriteriaService(db, settings.default_judge_model, served.__contains__))

    try:
        return with_database(args, on)
    except PipeserveError as error:
        print(f"pipeserve: {error.message}", file=sys.stderr)
        return 1 if error.status_code == 404 else 2


def _line(criterion: Criterion) -> str:
    wire = criterion.to_wire()
    return f"{wire.ref}\t{wire.judge_model}\t{wire.id}\t{wire.created}\t{wire.description[:60]}"


def _list(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        for criterion in await service.list_latest(args.project):
            print(_line(criterion))
        return 0

    return _run(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        criterion = await service.get(args.project, args.name)
        print(criterion.to_wire().model_dump_json(indent=2))
        return 0

    return _run(args, work)


def _versions(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        for criterion in await service.versions(args.project, args.name):
            print(_line(criterion))
        return 0

    return _run(args, work)


def _create(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        body: dict[str, Any] = {"name": args.name, "instructions": args.instructions}
        for key, value in (("description", args.description), ("judge_model", args.judge_model)):
            if value is not None:
                body[key] = value
        settings = _judge_settings(args)
        if settings is not None:
            body["judge_settings"] = settings
        criterion = await service.create(args.project, validate(CreateCriterionRequest, body))
        print(f"{criterion.ref}\t{criterion.id}")
        return 0

    return _run(args, work)


def _new_version(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        body = {
            "description": args.description,
            "instructions": args.instructions,
            "judge_model": args.judge_model,
            "judge_settings": _judge_settings(args),
        }
        request = validate(NewCriterionVersionRequest, body)
        criterion = await service.new_version(args.project, args.name, request)
        print(f"{criterion.ref}\t{criterion.id}")
        return 0

    return _run(args, work)


def _delete(args: argparse.Namespace) -> int:
    async def work(service: CriteriaService) -> int:
        deleted = await service.delete(args.project, args.name)
        print(f"Deleted {deleted.name} (all versions).")
        return 0

    return _run(args, work)
