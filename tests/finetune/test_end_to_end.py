"""The whole loop on the real server: completions logged with metadata, a dataset built from those logs, a
model trained on it (created through the `openpipe` SDK, interrupted by a restart, resumed), served as
`openpipe:<slug>` without a restart, evaluated against its base, downloaded, and deleted.

The task (tests/finetune/task.py) is a fixed JSON answer the prompt never asks for: the base model answers in
prose, the fine-tune must answer `{"name", "age", "city"}`. Training is tiny (40 examples, 3 epochs, LoRA):
about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, clean_env, start_server, stop_server
from tests.finetune.task import entries, has_format
from tests.sdk.test_openpipe_sdk import sdk_python

pytest.importorskip("torch", reason="training needs the train extra: pip install '.[train]'")
pytest.importorskip("peft", reason="training needs the train extra: pip install '.[train]'")

SLUG = "people-json"
SERVED = f"openpipe:{SLUG}"
FLOW = Path(__file__).with_name("openpipe_models_flow.py")


@dataclass
class Loop:
    tmp: Path
    server: Server
    dataset: str
    created: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    cancelled: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.server.v1}{path}", params=params, timeout=60)

    def model(self, name: str = SLUG) -> dict[str, Any]:
        response = self.get(f"/models/{name}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def restart(self) -> None:
        stop_server(self.server)
        self.server = start_server(self.tmp)


def sdk(server: Server, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(sdk_python()), str(FLOW), f"{server.url}/api/v1", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def report(server: Server, entry: dict[str, Any], metadata: dict[str, str]) -> None:
    """A completion made by some bigger model, logged through OpenPipe's /report."""
    now = int(time.time() * 1000)
    answer = entry["messages"][-1]
    body = {
        "requestedAt": now - 900,
        "receivedAt": now,
        "reqPayload": {"model": "gpt-4o", "messages": entry["messages"][:-1], "metadata": metadata},
        "respPayload": {
            "id": f"chatcmpl-{now}",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50},
        },
        "statusCode": 200,
    }
    assert httpx.post(f"{server.url}/api/v1/report", json=body, timeout=30).status_code == 200


def workers(directory: Path) -> list[int]:
    """Pids of training processes working in `directory`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pipeserve.finetune.worker" in command and str(directory).encode() in command:
            found.append(int(pid))
    return found


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("finetune-e2e")
    server = start_server(tmp)
    try:
        for entry in entries(40, seed=1):
            report(server, entry, {"task": "people", "split": "train"})
        for entry in entries(8, seed=2):
            report(server, entry, {"task": "people", "split": "test"})
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
        report(server, {"messages": chat}, {"task": "chat"})  # another task's log, which the filter leaves out
        dataset = httpx.post(f"{server.v1}/datasets", json={"name": "people"}, timeout=30).json()["id"]
        for split in ("train", "test"):
            added = httpx.post(
                f"{server.v1}/datasets/{dataset}/entries/from-logs",
                json={"metadata": {"task": "people", "split": split}, "split": split.upper()},
                timeout=60,
            ).json()
            assert added["entries_created"] == (40 if split == "train" else 8), added
        state = Loop(tmp, server, dataset)

        # A job deleted while it runs stops, and its files go.
        doomed = {"datasetId": dataset, "slug": "doomed", "trainingConfig": {"provider": "openpipe"}}
        created = httpx.post(f"{server.v1}/models", json=doomed, timeout=60).json()
        directory = tmp / "data" / "fine-tunes"
        job_dir = wait(lambda: next(directory.glob("ft_*"), None), 60, "the first job to start")
        wait(lambda: workers(job_dir), 60, "its worker process")
        deleted = httpx.delete(f"{server.v1}/models/doomed", timeout=30).json()
        stopped = wait(lambda: not workers(job_dir) and not job_dir.exists(), 30, "the worker to stop")
        state.cancelled = {"created": created, "deleted": deleted, "stopped": stopped}

        # The model, created through the openpipe SDK; a restart interrupts its training.
        flow = sdk(server, "create", dataset, SLUG, MODEL)
        state.created, state.refused = flow["created"], flow.get("refused", {})

        def training() -> bool:
            model = state.model()
            state.statuses.append(model["openpipe"]["status"])
            progress = model["openpipe"]["progress"] or {}
            if progress.get("phase") == "training":
                state.progress.append(progress)
            return bool(progress.get("phase") == "training")

        wait(training, 180, "training to start")
        state.restart()

        def finished() -> dict[str, Any] | None:
            model = state.model()
            status = model["openpipe"]["status"]
            state.statuses.append(status)
            if model["openpipe"]["progress"]:
                state.progress.append(model["openpipe"]["progress"])
            evaluation = model["openpipe"]["evaluation"] or {}
            if status == "ERROR" or (status == "DEPLOYED" and evaluation.get("status") not in ("running", "pending")):
                return model
            return None

        state.final = wait(finished, 600, "the model to be trained, served and evaluated")
        yield state
    finally:
        stop_server(server)
        if "state" in locals() and state.server is not server:
            stop_server(state.server)


def test_a_job_deleted_while_it_trains_stops_and_leaves_nothing(loop: Loop) -> None:
    assert loop.cancelled["created"]["openpipe"]["status"] == "PENDING"
    assert loop.cancelled["deleted"] == {"id": "openpipe:doomed", "object": "model", "deleted": True}
    assert loop.cancelled["stopped"]
    assert loop.get("/models/doomed").status_code == 404


def test_the_sdk_creates_the_model_and_reads_a_refusal(loop: Loop) -> None:
    created = loop.created
    assert created["id"] == SERVED and created["name"] == SLUG and created["object"] == "model"
    assert created["openpipe"]["status"] == "PENDING" and created["openpipe"]["datasetId"] == loop.dataset
    assert created["openpipe"]["hyperparameters"]["sft"] == {"num_epochs": 3.0, "batch_size": 8, "learning_rate": 5e-4}
    assert loop.refused["status"] == 400 and "No dataset" in loop.refused["body"]["error"]["message"]


def test_progress_is_shown_while_it_trains(loop: Loop) -> None:
    assert loop.final["openpipe"]["status"] == "DEPLOYED", loop.final["openpipe"]["errorMessage"]
    seen = list(dict.fromkeys(loop.statuses))
    assert seen[-1] == "DEPLOYED" and "TRAINING" in seen
    steps = [p for p in loop.progress if p.get("phase") == "training"]
    assert steps and all(
        {"step", "steps", "epoch", "loss", "eta_seconds", "examples_per_second"} <= set(p) for p in steps
    )


def test_a_restart_resumed_the_interrupted_job(loop: Loop) -> None:
    with sqlite3.connect(loop.tmp / "data" / "pipeserve.db") as conn:
        attempts = conn.execute("SELECT attempts FROM trained_models WHERE slug = ?", (SLUG,)).fetchone()[0]
    assert attempts == 2  # started, put back in the queue at shutdown, started again after the restart


def test_it_learnt_the_answer_format_the_base_model_does_not_give(loop: Loop) -> None:
    evaluation = loop.final["openpipe"]["evaluation"]
    assert evaluation["status"] == "done" and evaluation["test_entries"] == 8
    tuned, base = evaluation["models"]["fine_tuned"], evaluation["models"]["base"]
    assert tuned["model"] == SERVED and base["model"] == MODEL
    assert tuned["exact_match"] >= 0.75, evaluation
    assert base["exact_match"] <= 0.25, evaluation
    # A sentence of no dataset: the format is learnt (the values are the evaluation's business, above).
    ask = [{"role": "user", "content": "Tomas is 52 and lives in Oslo."}]
    client = loop.server.client()
    for model, learnt in ((SERVED, True), (MODEL, False)):
        reply = client.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=40)
        assert has_format(reply.choices[0].message.content) is learnt, reply.choices[0].message.content


def test_every_feature_works_on_the_trained_model(loop: Loop) -> None:
    client = loop.server.client()
    ask = [{"role": "user", "content": "Zoe is 23 and lives in Lima."}]
    logged = client.chat.completions.create(model=SERVED, messages=ask, temperature=0, metadata={"check": "logged"})
    logs = wait(lambda: loop.get("/logs", **{"metadata.check": "logged"}).json()["data"], 20, "the log")
    assert logs[0]["model"] == SERVED and logs[0]["completion_id"] == logged.id
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    structured = client.chat.completions.create(
        model=SERVED,
        messages=ask,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    assert set(json.loads(structured.choices[0].message.content or "")) == {"name", "age"}
    tool = {"type": "function", "function": {"name": "save", "parameters": schema}}
    called = client.chat.completions.create(
        model=SERVED, messages=ask, temperature=0, tools=[tool], tool_choice="required", max_tokens=60
    )
    calls = called.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "save"  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model=SERVED, messages=ask, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("{")


def test_its_weights_can_be_downloaded(loop: Loop) -> None:
    listed = loop.get(f"/models/{SLUG}/weights").json()["data"]
    names = {item["name"]: item for item in listed}
    assert {"model.gguf", "hf/config.json", "hf/model.safetensors", "hf/tokenizer.json"} <= set(names)
    assert names["model.gguf"]["url"] == f"/v1/models/{SLUG}/weights/model.gguf"
    config = httpx.get(f"{loop.server.url}/api/v1/models/{SLUG}/weights/hf/config.json", timeout=30).json()
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with httpx.stream("GET", f"{loop.server.url}{names['model.gguf']['url']}", timeout=60) as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == names["model.gguf"]["bytes"]
        assert next(response.iter_bytes())[:4] == b"GGUF"
    data_dir = str(loop.server.data_dir)
    command = [sys.executable, "-m", "pipeserve", "models"]
    target = loop.tmp / "copy.gguf"
    copied = subprocess.run(
        [*command, "download", SLUG, "-o", str(target), "--data-dir", data_dir],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert copied.returncode == 0, copied.stderr
    assert target.stat().st_size == names["model.gguf"]["bytes"]
    listing = subprocess.run(
        [*command, "list", "--data-dir", data_dir], capture_output=True, text=True, env=clean_env()
    )
    assert f"{SLUG}\tDEPLOYED\t{MODEL}\t{loop.dataset}" in listing.stdout
    shown = subprocess.run(
        [*command, "show", SLUG, "--data-dir", data_dir], capture_output=True, text=True, env=clean_env()
    )
    assert json.loads(shown.stdout)["evaluation"]["status"] == "done"


def test_both_sdks_list_it(loop: Loop) -> None:
    flow = sdk(loop.server, "read", SLUG)
    mine = next(model for model in flow["listed"] if model["id"] == SERVED)
    assert mine["openpipe"]["status"] == "DEPLOYED" and mine["contextWindow"] > 0
    got = flow["got"]  # as the SDK parsed it: its own fields only, `created` read as the string it types
    assert got["id"] == SERVED and got["name"] == SLUG and got["created"] == str(int(got["created"]))
    assert got["openpipe"]["status"] == "DEPLOYED" and got["openpipe"]["baseModel"] == MODEL
    assert got["openpipe"]["datasetId"] == loop.dataset and got["openpipe"]["hyperparameters"]["method"] == "lora"
    assert SERVED in [model.id for model in loop.server.client().models.list()]


def test_it_is_served_after_a_restart(loop: Loop) -> None:
    loop.restart()
    assert loop.model(SERVED)["openpipe"]["status"] == "DEPLOYED"
    reply = loop.server.client().chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Ivan is 33 and lives in Riga."}], temperature=0
    )
    assert has_format(reply.choices[0].message.content), reply.choices[0].message.content


def test_deleting_it_stops_serving_it_and_removes_its_files(loop: Loop) -> None:
    directory = next((loop.tmp / "data" / "fine-tunes").glob("ft_*"))
    assert sdk(loop.server, "delete", SLUG)["deleted"] == {"id": SERVED, "object": "model", "deleted": True}
    assert not directory.exists()
    client = loop.server.client()

    def gone() -> bool:
        try:
            client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        except Exception as error:
            return "does not exist" in str(error)
        return False

    wait(gone, 20, "the model to be unserved")
