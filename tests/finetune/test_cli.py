"""`pipeserve models train` in a terminal, beside a server that trains nothing itself (`finetune_max_jobs = 0`,
a serving replica): the command trains with a progress bar and evaluates on engines of its own, and the running
server serves the model as soon as the store says DEPLOYED, without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, clean_env, start_server, stop_server
from tests.finetune.task import entries, has_format

pytest.importorskip("torch", reason="training needs the train extra: pip install '.[train]'")
pytest.importorskip("peft", reason="training needs the train extra: pip install '.[train]'")


def pipeserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeserve", *args], capture_output=True, text=True, env=clean_env(), timeout=timeout
    )


def test_a_model_trained_from_the_terminal_is_served_by_a_running_server(tmp_path: Path) -> None:
    server = start_server(tmp_path, config="finetune_max_jobs = 0\n")
    try:
        data = ["--data-dir", str(server.data_dir)]
        dataset = httpx.post(f"{server.v1}/datasets", json={"name": "cli"}, timeout=30).json()["id"]
        rows = [dict(e, split="TRAIN") for e in entries(24, seed=11)] + [
            dict(e, split="TEST") for e in entries(4, seed=12)
        ]
        httpx.post(f"{server.v1}/datasets/{dataset}/entries", json={"entries": rows}, timeout=30).raise_for_status()

        bad = pipeserve("models", "train", dataset, "--slug", "Not A Slug", *data)
        assert bad.returncode == 2 and "Invalid slug" in bad.stderr

        trained = pipeserve("models", "train", dataset, "--slug", "cli-json", "--epochs", "3", *data, timeout=600)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "training [" in trained.stderr and "steps" in trained.stderr and "left" in trained.stderr
        assert "openpipe:cli-json: DEPLOYED" in trained.stdout
        assert "fine_tuned openpipe:cli-json:" in trained.stdout

        shown = json.loads(pipeserve("models", "show", "cli-json", *data).stdout)
        evaluation = shown["evaluation"]
        assert evaluation["status"] == "done" and evaluation["models"]["base"]["model"] == MODEL
        assert evaluation["models"]["fine_tuned"]["matches"] >= 3, evaluation
        assert shown["result"]["train_examples"] == 24 and shown["result"]["sft"]["examples"] == 72

        client = server.client()
        fresh = entries(1, seed=13)[0]

        def answered() -> str | None:
            try:
                reply = client.chat.completions.create(
                    model="openpipe:cli-json", messages=fresh["messages"][:1], temperature=0, max_tokens=40
                )
            except Exception:
                return None
            return reply.choices[0].message.content

        deadline = time.monotonic() + 30
        while (content := answered()) is None and time.monotonic() < deadline:
            time.sleep(1)
        assert has_format(content), content
        assert pipeserve("models", "delete", "cli-json", *data).returncode == 0
        assert pipeserve("models", "show", "cli-json", *data).returncode == 1
    finally:
        stop_server(server)
