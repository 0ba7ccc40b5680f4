"""`pipeserve criteria ...` on the store, without a server: create, list, show, versions, new-version, delete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import MODEL, clean_env


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeserve", "criteria", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def test_the_life_of_a_criterion(tmp_path: Path) -> None:
    created = cli("create", "polite", "--instructions", "PASS if polite.", "--max-tokens", "32", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    ref, criterion_id = created.stdout.strip().split("\t")
    assert ref == "polite@v1" and criterion_id.startswith("crit_")

    again = cli("create", "polite", "--instructions", "x", data_dir=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr

    version = cli("new-version", "polite", "--description", "Tone", "--temperature", "0.5", data_dir=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("polite@v2\t")

    [line] = cli("list", data_dir=tmp_path).stdout.splitlines()
    assert line.split("\t")[:2] == ["polite@v2", MODEL] and line.endswith("Tone")

    shown = json.loads(cli("show", "polite@v1", data_dir=tmp_path).stdout)
    assert shown["instructions"] == "PASS if polite." and shown["id"] == criterion_id
    assert shown["judge_settings"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 32, "seed": None}
    latest = json.loads(cli("show", "polite", data_dir=tmp_path).stdout)
    assert latest["version"] == 2 and latest["judge_settings"]["temperature"] == 0.5
    assert latest["judge_settings"]["max_tokens"] == 32

    versions = cli("versions", "polite", data_dir=tmp_path).stdout.splitlines()
    assert [v.split("\t")[0] for v in versions] == ["polite@v1", "polite@v2"]

    deleted = cli("delete", "polite", data_dir=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    missing = cli("show", "polite", data_dir=tmp_path)
    assert missing.returncode == 1 and "No criterion 'polite'" in missing.stderr
    assert cli("list", data_dir=tmp_path).stdout == ""


def test_bad_input_exits_2(tmp_path: Path) -> None:
    bad_name = cli("create", "no spaces", "--instructions", "x", data_dir=tmp_path)
    assert bad_name.returncode == 2 and "name" in bad_name.stderr
    unserved = cli("create", "ok", "--instructions", "x", "--judge-model", "gpt-9", data_dir=tmp_path)
    assert unserved.returncode == 2 and "gpt-9" in unserved.stderr
    budget = cli("create", "ok", "--instructions", "x", "--max-tokens", "1", data_dir=tmp_path)
    assert budget.returncode == 2 and "max_tokens" in budget.stderr
    assert cli("create", "ok", "--instructions", "x", data_dir=tmp_path).returncode == 0
    unchanged = cli("new-version", "ok", "--instructions", "x", data_dir=tmp_path)
    assert unchanged.returncode == 2 and "Nothing changed" in unchanged.stderr
    assert cli("new-version", "missing", "--instructions", "y", data_dir=tmp_path).returncode == 1
    assert cli("delete", "missing", data_dir=tmp_path).returncode == 1
