"""API keys: shown once when created, stored only as SHA-256 hashes in `<data_dir>/keys.json`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KEY_PREFIX = "ps-"
DEFAULT_PROJECT = "default"
_RACY_NS = 2_000_000_000  # a file modified this close to our read of it may have changed unseen since


@dataclass(frozen=True)
class StoredKey:
    id: str
    name: str
    hash: str
    created: int
    # Logs, datasets and cache entries belong to the key's project; keys made before projects existed
    # belong to the default one, as do all requests while no key exists.
    project: str = DEFAULT_PROJECT


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The key file; keys created or revoked while the server runs take effect at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw: bytes | None = None
        self._keys: list[StoredKey] = []
        self._seen: tuple[int, int, int, int] | None = None  # the file's identity when last read
        self._read_at = 0  # ns, when it was last read

    def all(self) -> list[StoredKey]:
        # A revoked key must stop working at once, so the file is checked on every call: a stat, and a read
        # only when it may have changed. Its identity (inode, size, mtime, ctime) changes with any rewrite
        # (ours replace the file), unless the rewrite falls in the same timestamp tick as our last read: a
        # file modified less than 2 s before that read (coarse clocks, "racy" as git calls it) is read again.
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._raw, self._keys, self._seen = None, [], None
            return []
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if seen == self._seen and max(stat.st_mtime_ns, stat.st_ctime_ns) < self._read_at - _RACY_NS:
            return self._keys
        read_at = time.time_ns()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._raw, self._keys, self._seen = None, [], None
            return []
        if raw != self._raw:
            self._keys = [StoredKey(**entry) for entry in json.loads(raw).get("keys", [])]
            self._raw = raw
        self._seen, self._read_at = seen, read_at
        return self._keys

    def verify(self, key: str) -> bool:
        return self.find(key) is not None

    def find(self, key: str, keys: list[StoredKey] | None = None) -> StoredKey | None:
        """The stored key for `key`, among `keys` when the caller has just read `all()`. Constant-time: every
        stored hash is compared, whatever matches."""
        digest = _digest(key)
        found: StoredKey | None = None
        for stored in self.all() if keys is None else keys:
            if hmac.compare_digest(digest, stored.hash):
                found = stored
        return found

    def create(self, name: str = "", project: str = DEFAULT_PROJECT) -> tuple[StoredKey, str]:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        stored = StoredKey(
            id=f"key_{secrets.token_hex(6)}",
            name=name,
            hash=_digest(key),
            created=int(time.time()),
            project=project,
        )
        self._write([*self.all(), stored])
        return stored, key

    def revoke(self, key_id: str) -> bool:
        keys = self.all()
        kept = [k for k in keys if k.id != key_id]
        if len(kept) == len(keys):
            return False
        self._write(kept)
        return True

    def _write(self, keys: list[StoredKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(k) for k in keys]}, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        self._raw, self._seen = None, None
