"""KeyStore: keys shown once, stored as SHA-256 hashes in a private file, re-read when it changes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pipeserve.keys import KeyStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keys.json"


def test_empty_store(path: Path) -> None:
    store = KeyStore(path)
    assert store.all() == []
    assert store.verify("ps-anything") is False
    assert not path.exists()


def test_created_key_verifies_and_others_do_not(path: Path) -> None:
    store = KeyStore(path)
    stored, key = store.create("ci")
    assert key.startswith("ps-") and len(key) > 20
    assert store.verify(key) is True
    assert store.verify(key + "x") is False
    assert store.verify(key[:-1]) is False
    assert store.verify("") is False
    assert [(k.id, k.name) for k in store.all()] == [(stored.id, "ci")]
    other_stored, other = store.create()
    assert other != key and other_stored.id != stored.id
    assert store.verify(key) and store.verify(other)


def test_file_holds_only_the_hash(path: Path) -> None:
    stored, key = KeyStore(path).create("ci")
    text = path.read_text()
    assert key not in text
    assert key.removeprefix("ps-") not in text
    assert json.loads(text) == {
        "keys": [
            {
                "id": stored.id,
                "name": "ci",
                "hash": hashlib.sha256(key.encode()).hexdigest(),
                "created": stored.created,
                "project": "default",
            }
        ]
    }


def test_file_is_private(path: Path) -> None:
    KeyStore(path).create()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_revoke(path: Path) -> None:
    store = KeyStore(path)
    stored, key = store.create("gone")
    kept_stored, kept = store.create("kept")
    assert store.revoke("key_unknown") is False
    assert store.revoke(stored.id) is True
    assert store.verify(key) is False
    assert store.verify(kept) is True
    assert [k.id for k in KeyStore(path).all()] == [kept_stored.id]
    assert store.revoke(stored.id) is False


def test_second_instance_sees_changes_of_the_first(path: Path) -> None:
    writer, reader = KeyStore(path), KeyStore(path)
    assert reader.verify("ps-x") is False
    stored, key = writer.create()
    assert reader.verify(key) is True
    writer.revoke(stored.id)
    assert reader.verify(key) is False


def test_revocation_is_seen_even_when_size_and_mtime_are_unchanged(path: Path) -> None:
    writer, reader = KeyStore(path), KeyStore(path)
    stored, key = writer.create("k")
    assert reader.verify(key) is True
    before = path.stat()
    writer.revoke(stored.id)
    writer.create("k")
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert reader.verify(key) is False


def test_keys_belong_to_projects(path: Path) -> None:
    store = KeyStore(path)
    a, key_a = store.create("a", project="alpha")
    _, key_b = store.create("b")
    found = store.find(key_a)
    assert found is not None and found.id == a.id and found.project == "alpha"
    found = store.find(key_b)
    assert found is not None and found.project == "default"
    assert store.find("ps-nope") is None


def test_keys_from_before_projects_belong_to_the_default_project(path: Path) -> None:
    key = "ps-old"
    old = {"id": "key_1", "name": "", "hash": hashlib.sha256(key.encode()).hexdigest(), "created": 1}
    path.parent.mkdir()
    path.write_text(json.dumps({"keys": [old]}))
    found = KeyStore(path).find(key)
    assert found is not None and found.project == "default"
