"""The spill file: log rows the database could not take yet, on local disk until it can.

JSON lines, appended and fsync'd, read back oldest first and emptied once every line is in the database. A
line that a crash cut short was never acknowledged to anyone; it is dropped (and counted) when the file is
opened. One process owns the file at a time (an exclusive `flock`), so two servers sharing a data directory
can't replay or truncate each other's rows.

Every method blocks on disk I/O: the log writer calls them in a worker thread, one at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("pipeserve.store")


class SpillLockedError(RuntimeError):
    pass


class SpillFile:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0  # bytes in the file
        self.rows = 0  # lines in the file not yet stored in the database
        self.torn = 0  # lines a crash cut short, found at open
        self._read_at = 0  # where the next unstored line starts
        self._fd = -1

    def open(self) -> None:
        """Open (or create) and lock the file, counting the rows a previous run left in it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)  # request payloads: owner only
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpillLockedError(
                f"{self.path} is held by another pipeserve process; give each server its own data_dir"
            ) from None
        self._fd = fd
        if created:
            _fsync_dir(self.path.parent)
        self._recount()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def append(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append the rows, in order, and make them durable; the rows left out: those beyond `max_bytes` and
        any that can't be encoded."""
        lines: list[bytes] = []
        left: list[dict[str, Any]] = []
        size = self.size
        full = False
        for row in rows:
            if full:
                left.append(row)
                continue
            try:
                line = orjson.dumps(row) + b"\n"
            except orjson.JSONEncodeError:
                log.exception("a log row could not be encoded for the spill file")
                left.append(row)
                continue
            if size + len(line) > self.max_bytes:
                full = True  # and every later row is left out too, so that the file keeps their order
                left.append(row)
                continue
            lines.append(line)
            size += len(line)
        if lines:
            self._write(b"".join(lines))
            self.size = size
            self.rows += len(lines)
        return left

    def _write(self, data: bytes) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError:
            # A partial line would join the next one: cut the file back to where it was.
            os.ftruncate(self._fd, self.size)
            raise

    def read(self, limit: int) -> tuple[list[dict[str, Any]], int, int]:
        """Up to `limit` unstored rows, oldest first, without consuming them: (rows, the offset after them,
        lines that could not be decoded among them)."""
        rows: list[dict[str, Any]] = []
        bad = 0
        offset = self._read_at
        with open(self.path, "rb") as file:
            file.seek(offset)
            while len(rows) + bad < limit:
                line = file.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    row = None
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
        return rows, offset, bad

    def consume(self, offset: int, count: int) -> None:
        """The rows before `offset` are in the database; once nothing is left, the file is emptied."""
        self._read_at = offset
        self.rows -= count
        if self._read_at >= self.size or self.rows <= 0:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self.size = self._read_at = self.rows = 0

    def _recount(self) -> None:
        size = os.fstat(self._fd).st_size
        rows = 0
        end = 0  # just after the last complete line
        with open(self.path, "rb") as file:
            while block := file.read(1 << 20):
                rows += block.count(b"\n")
                last = block.rfind(b"\n")
                if last >= 0:
                    end = file.tell() - len(block) + last + 1
        if end < size:
            self.torn = 1
            log.warning("%s ended in a line cut short by a crash; it is dropped", self.path)
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self.size, self.rows, self._read_at = end, rows, 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
