"""The `pipeserve` command. Its flags are derived from the settings class."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from pipeserve import __version__
from pipeserve.commands import criteria as criteria_commands
from pipeserve.commands import datasets as datasets_commands
from pipeserve.commands import logs as logs_commands
from pipeserve.commands import models as models_commands
from pipeserve.commands.common import add_settings_flags, load_settings
from pipeserve.keys import DEFAULT_PROJECT

# Settings that are flat enough to be command-line flags; `models` lives in the config file or the env.
_FLAG_FIELDS = (
    "host",
    "port",
    "data_dir",
    "database_url",
    "log_requests",
    "cache_ttl_seconds",
    "max_queued_requests",
    "log_level",
)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeserve.errors import UnsafeBindError
    from pipeserve.keys import KeyStore
    from pipeserve.server.access_log import AccessLog
    from pipeserve.server.app import check_bind, create_app

    settings = load_settings(args, _FLAG_FIELDS)
    # Read by libgomp when llama.cpp loads (the engines import it later), and inherited by the processes
    # that measure weight formats.
    if settings.omp_wait_policy != "default":
        os.environ.setdefault("OMP_WAIT_POLICY", settings.omp_wait_policy.upper())
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_bind(settings, KeyStore(settings.keys_file))
    except UnsafeBindError as exc:
        print(f"pipeserve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, reload=lambda: load_settings(args, _FLAG_FIELDS))
    if settings.log_level.lower() in ("debug", "info"):
        app.access_log = AccessLog()  # uvicorn's lines, written in batches (server/access_log.py)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    finally:
        if app.access_log is not None:
            app.access_log.flush()
    # Non-zero when the server stopped itself because a model could not serve (service/watchdog.py).
    return int(getattr(app.state, "exit_status", 0))


def _keys(args: argparse.Namespace) -> int:
    from pipeserve.keys import KeyStore

    store = KeyStore(load_settings(args, ("data_dir",)).keys_file)
    if args.keys_command == "create":
        stored, key = store.create(args.name, args.project)
        print(key)
        print(f"Created {stored.id}. This key is shown once; pipeserve keeps only its hash.", file=sys.stderr)
    elif args.keys_command == "list":
        for stored in store.all():
            print(f"{stored.id}\t{stored.project}\t{stored.name}\t{stored.created}")
    elif args.keys_command == "revoke" and not store.revoke(args.key_id):
        print(f"pipeserve: no key with id {args.key_id}; `pipeserve keys list` shows them", file=sys.stderr)
        return 1
    return 0


def _settings_reference(_: argparse.Namespace) -> int:
    from pipeserve.docs import settings_reference

    sys.stdout.write(settings_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeserve", description="A self-hosted, OpenPipe-compatible LLM server.")
    parser.add_argument("--version", action="version", version=f"pipeserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Serve the configured models over HTTP.")
    add_settings_flags(serve, _FLAG_FIELDS)
    serve.set_defaults(handler=_serve)

    keys = commands.add_parser("keys", help="Manage API keys.")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="Create a key and print it (once).")
    create.add_argument("--name", default="", help="A label to recognise the key by.")
    create.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help="The project whose logs, datasets and cache the key reads and writes (default: default).",
    )
    keys_commands.add_parser("list", help="List key ids, projects, names and creation times.")
    revoke = keys_commands.add_parser("revoke", help="Revoke a key by id.")
    revoke.add_argument("key_id")
    for sub in keys_commands.choices.values():
        add_settings_flags(sub, ("data_dir",))
    keys.set_defaults(handler=_keys)

    logs_commands.register(commands)
    datasets_commands.register(commands)
    criteria_commands.register(commands)
    models_commands.register(commands)

    reference = commands.add_parser("settings", help="Print the configuration reference (Markdown).")
    reference.set_defaults(handler=_settings_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"pipeserve: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
