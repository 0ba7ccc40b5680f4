"""`pipeserve datasets ...`."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the `datasets` command to the `pipeserve` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser("datasets", help="(not yet)")
    del parser
