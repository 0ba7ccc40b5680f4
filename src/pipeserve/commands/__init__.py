"""Subcommands of `pipeserve` that work on the store directly (no server needed)."""
