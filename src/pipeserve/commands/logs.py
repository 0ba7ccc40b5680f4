"""`pipeserve logs ...`."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the `logs` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("logs", help="(not yet)")
    del parser
