"""What the store commands share: settings flags, the project, and running a coroutine on the database."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pipeserve.keys import DEFAULT_PROJECT
from pipeserve.settings import Settings
from pipeserve.store.db import Database, open_database

T = TypeVar("T")

STORE_FLAGS = ("data_dir", "database_url")


def add_settings_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML config file (also PIPESERVE_CONFIG).")
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            type=int if field.annotation is int else str,
            help=f"{field.description} (env: PIPESERVE_{name.upper()})",
        )


def load_settings(args: argparse.Namespace, names: tuple[str, ...]) -> Settings:
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    config = args.config or (Path(os.environ["PIPESERVE_CONFIG"]) if os.environ.get("PIPESERVE_CONFIG") else None)
    return Settings.load(config, **overrides)


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--data-dir`, `--database-url` and `--project`, for a command that reads the store."""
    add_settings_flags(parser, STORE_FLAGS)
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="The project to act in (default: default).")


def with_database(args: argparse.Namespace, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the store named by the flags (migrating it if needed), run `work` on it, close it."""
    settings = load_settings(args, STORE_FLAGS)

    async def run() -> T:
        db = await open_database(settings.store_url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())
