"""Fuzzing every route of the real server: hypothesis draws requests, a raw HTTP/1.1 client sends them byte for
byte, and one oracle judges the answers.

Shared by tests/server/test_fuzz.py (a short derandomized run per route) and bench/fuzz.py (a long seeded run
over all routes), so both send the same kinds of requests and hold the server to the same rules:

- a 2xx or a 4xx: never a 5xx (not even a documented 503: the fuzzed server has its model and its store), nor a
  redirect;
- every 4xx is JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` with exactly those keys
  and a non-empty message (only a request broken at the HTTP level may get the HTTP server's plain 400);
- every 2xx is valid against the route's wire model (no key the model doesn't declare), a stream is
  `data: <chunk>` events ending in `data: [DONE]`, and only a body that is a JSON object is ever accepted;
- an accepted `/report` or `/report-anthropic` reads back through `GET /logs` as it was sent;
- the server stays healthy: `GET /health` answers 200 after every request.

Requests are drawn three ways: a valid request of the route, unchanged (so answers reach the wire models);
a valid request with one to three mutations (a key deleted, a value of another JSON type, an unknown key, a
value nested or duplicated, a string made huge or empty, a number's sign or size changed, nesting near and
past the depth limit...), so that requests reach deep code rather than only the validator; and bodies from
scratch (random JSON, JSON that is no object, bytes that are no JSON, invalid UTF-8, an empty body). Headers
(Content-Type, Content-Length lies, chunked bodies, Authorization, `op-*`), path parameters and query strings
are drawn along.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import httpx
import orjson
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pipeserve.protocol.chat_completions import ChatCompletion, ChatCompletionChunk
from pipeserve.protocol.criteria import Alignment, Criterion, CriterionList, DeletedCriterion, JudgeResponse
from pipeserve.protocol.datasets import (
    Dataset,
    DatasetEntriesCreated,
    DatasetEntriesFromLogs,
    DatasetEntryList,
    DatasetList,
    DeletedDataset,
)
from pipeserve.protocol.health import Health
from pipeserve.protocol.logs import LatestLoggedCall, Log, LogList, ReportResponse, UpdateResponse
from pipeserve.protocol.models import ModelCard, ModelList
from pipeserve.protocol.models_api import DeletedModel, WeightsList
from pipeserve.settings import Settings

MODEL = "SmolLM2-135M-Instruct"
ERROR_KEYS = {"message", "type", "param", "code"}
# The server's limits, as its settings default them: bodies are drawn around them.
LIMITS = {name: Settings.model_fields[name].default for name in ("max_json_depth", "max_request_bytes")}
MAX_DEPTH: int = LIMITS["max_json_depth"]
MAX_BYTES: int = LIMITS["max_request_bytes"]
# Completion budgets above this are cut to it: the fuzzer tests what the server accepts, not how fast it writes.
CHEAP_TOKENS = 4


# ---------------------------------------------------------------------------------------------------------
# Values JSON can carry that Python's can't say: raw text, duplicate keys, and placeholders filled when sent
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: `NaN`, `1e400`, or nesting too deep to build as Python objects."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """An object whose members are written in this order, duplicate keys included."""

    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Fresh:
    """A value made when the request is sent: a unique `name`, or the id of a new `dataset` or `criterion`, or
    the slug of a new trained `model` (queued only: the fuzzed servers train nothing), so that deleting one doesn't
    leave every later request a 404."""

    kind: Literal["name", "dataset", "criterion", "model"]


def nested(depth: int, inner: str = "1", kind: str = "[") -> Raw:
    """`depth` levels of arrays (or objects) around `inner`."""
    if kind == "[":
        return Raw("[" * depth + inner + "]" * depth)
    return Raw('{"a":' * depth + inner + "}" * depth)


def encode(value: Any, fill: Callable[[Fresh], str], *, ascii_only: bool = True, spaced: bool = False) -> bytes:
    """`value` as JSON bytes. A lone surrogate is written as an escape (`ascii_only`) or as the raw bytes that
    UTF-8 forbids."""
    comma, colon = (", ", ": ") if spaced else (",", ":")

    def text(s: str) -> str:
        return json.dumps(s, ensure_ascii=ascii_only)

    def walk(node: Any) -> str:
        if isinstance(node, Raw):
            return node.text
        if isinstance(node, Fresh):
            return text(fill(node))
        if isinstance(node, Pairs):
            return "{" + comma.join(text(k) + colon + walk(v) for k, v in node.items) + "}"
        if isinstance(node, dict):
            return "{" + comma.join(text(str(k)) + colon + walk(v) for k, v in node.items()) + "}"
        if isinstance(node, list | tuple):
            return "[" + comma.join(walk(v) for v in node) + "]"
        if isinstance(node, str):
            return text(node)
        if isinstance(node, float) and not math.isfinite(node):
            return "NaN" if math.isnan(node) else ("Infinity" if node > 0 else "-Infinity")
        return json.dumps(node)

    return walk(value).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------------------
# Requests and answers on the wire
# ---------------------------------------------------------------------------------------------------------

# How the body is framed: an honest Content-Length; chunked; a Content-Length that says less than is sent, more
# than is sent (the client then stops sending), or far more than the server accepts; or no framing at all.
Framing = Literal["exact", "chunked", "short", "long", "huge", "none"]


@dataclass(frozen=True)
class Draft:
    """A request as drawn, before its `Fresh` placeholders are filled."""

    route: str
    method: str
    path: tuple[Any, ...]  # segments: str (sent as is, already encoded) or Fresh
    query: str  # as sent, without the `?`
    headers: tuple[tuple[str, bytes], ...]
    body: Any  # a JSON-ish value, bytes (sent as is), or None (no body)
    framing: Framing = "exact"
    ascii_only: bool = True
    spaced: bool = False


@dataclass(frozen=True)
class Sent:
    """A request exactly as it went on the wire."""

    route: str
    method: str
    target: bytes
    headers: tuple[tuple[str, bytes], ...]
    body: bytes | None
    framing: Framing

    def body_object(self) -> dict[str, Any] | None:
        """The body as the server's JSON parser reads it, if it is a JSON object."""
        try:
            data = orjson.loads(self.body or b"")
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def describe(self, limit: int = 400) -> str:
        lines = [f"{self.method} {self.target.decode('latin-1')}  [{self.route}; framing {self.framing}]"]
        lines += [f"  {name}: {value[:200]!r}" for name, value in self.headers]
        if self.body is not None:
            shown = self.body[:limit]
            more = f" ... ({len(self.body)} bytes)" if len(self.body) > limit else ""
            lines.append(f"  body: {shown!r}{more}")
        return "\n".join(lines)


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str]
    body: bytes
    seconds: float
    problem: str | None = None  # what went wrong reading it (a timeout)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


def wire_request(sent: Sent, host: str) -> bytes:
    body = sent.body if sent.body is not None else b""
    head = [f"{sent.method} ".encode() + sent.target + b" HTTP/1.1", f"Host: {host}".encode(), b"Connection: close"]
    head += [name.encode() + b": " + value for name, value in sent.headers]
    if sent.framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        size = max(1, len(body) // 3)
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    elif sent.framing == "exact" and (sent.body is not None or sent.method in ("POST", "PUT", "PATCH")):
        head.append(b"Content-Length: %d" % len(body))
    elif sent.framing == "short":
        head.append(b"Content-Length: %d" % (len(body) // 2))
    elif sent.framing == "long":
        head.append(b"Content-Length: %d" % (len(body) + 1000))
    elif sent.framing == "huge":
        head.append(b"Content-Length: %d" % (10 * MAX_BYTES))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def send(host: str, port: int, sent: Sent, timeout: float = 120) -> Answer:
    """One request on a new connection (`Connection: close`), read until the server closes it."""
    started = time.monotonic()
    data = bytearray()
    problem = None
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(wire_request(sent, f"{host}:{port}"))
            if sent.framing == "long":
                sock.shutdown(socket.SHUT_WR)  # the rest of the body never comes
        except OSError:
            pass  # the server may answer (a 413) and close before it has read everything
        deadline = started + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                problem = f"no end of the answer within {timeout:.0f} s"
                break
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    answer = parse_answer(bytes(data))
    answer.seconds = time.monotonic() - started
    answer.problem = problem
    return answer


def parse_answer(data: bytes) -> Answer:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return Answer(None, {}, data, 0.0)
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return Answer(None, {}, data, 0.0)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while rest:
            size_line, sep, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return Answer(status, headers, bytes(body), 0.0)
    if "content-length" in headers and headers["content-length"].isdigit():
        return Answer(status, headers, rest[: int(headers["content-length"])], 0.0)
    return Answer(status, headers, rest, 0.0)


# ---------------------------------------------------------------------------------------------------------
# The server under test and what the fuzzer made on it
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A running server, the key it is fuzzed with (None: the server has no keys), and resources made on it for
    requests to name: a dataset, a criterion, a log, a completion id."""

    url: str
    key: str | None
    dataset_id: str = ""
    criterion: str = ""
    log_id: str = ""
    completion_id: str = ""
    cursor: str = ""
    entries_cursor: str = ""
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _client: httpx.Client | None = None

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=f"{self.url}/v1", headers=headers, timeout=120)

    @property
    def client(self) -> httpx.Client:
        """One client for the resources made while fuzzing: making a client costs more than a request."""
        if self._client is None:
            self._client = self.http()
        return self._client

    def unique(self, prefix: str = "fuzz") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}-{next(self._counter)}"

    def fill(self, fresh: Fresh) -> str:
        if fresh.kind == "name":
            return self.unique()
        if fresh.kind == "dataset":
            response = self.client.post("/datasets", json={"name": self.unique()})
            return str(response.json()["id"])
        if fresh.kind == "model":
            slug = self.unique()
            body = {"datasetId": self.dataset_id, "slug": slug, "trainingConfig": {"provider": "openpipe"}}
            self.client.post("/models", json=body)
            return slug
        name = self.unique()
        self.client.post("/criteria", json={"name": name, "instructions": "PASS if polite.", **CHEAP_JUDGE})
        return name

    def prepare(self) -> Target:
        """Make what valid requests name, through the API, and check that each step worked."""
        with self.http() as http:
            self.criterion = self.unique("judge")
            made = http.post(
                "/criteria", json={"name": self.criterion, "instructions": "PASS if polite.", **CHEAP_JUDGE}
            )
            assert made.status_code == 200, made.text
            for i in range(3):
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say hi {i}"}], "max_tokens": 3}
                done = http.post("/chat/completions", json=body, headers={"op-tags": '{"fuzz": "1"}'})
                assert done.status_code == 200, done.text
                self.completion_id = done.json()["id"]
            reported = http.post("/report", json=valid_report(self))
            assert reported.status_code == 200, reported.text
            page = http.get("/logs", params={"limit": 1})
            assert page.status_code == 200, page.text
            self.log_id = page.json()["data"][0]["id"]
            self.cursor = page.json()["next_cursor"]
            made = http.post("/datasets", json={"name": self.unique()})
            assert made.status_code == 200, made.text
            self.dataset_id = made.json()["id"]
            added = http.post(f"/datasets/{self.dataset_id}/entries", json={"entries": valid_entries() * 2})
            assert added.status_code == 200 and not added.json()["errors"]["data"], added.text
            entries = http.get(f"/datasets/{self.dataset_id}/entries", params={"limit": 1})
            self.entries_cursor = entries.json()["next_cursor"]
        return self

    def resolve(self, draft: Draft) -> Sent:
        path = "".join("/" + (self.fill(s) if isinstance(s, Fresh) else s) for s in draft.path)
        target = path + ("?" + draft.query if draft.query else "")
        if isinstance(draft.body, bytes) or draft.body is None:
            body = draft.body
        else:
            body = encode(draft.body, self.fill, ascii_only=draft.ascii_only, spaced=draft.spaced)
        headers = tuple((n, v.replace(b"{key}", (self.key or "none").encode())) for n, v in draft.headers)
        return Sent(draft.route, draft.method, target.encode("latin-1"), headers, body, draft.framing)

    def send(self, sent: Sent, timeout: float = 120) -> Answer:
        return send(self.host, self.port, sent, timeout)

    def healthy(self) -> str | None:
        """Why the server is unwell, or None."""
        try:
            answer = self.send(Sent("GET /health", "GET", b"/health", (), None, "exact"), timeout=30)
        except OSError as exc:
            return f"GET /health failed: {exc!r}"
        if answer.status != 200:
            return f"GET /health answered {answer.status}: {answer.body[:300]!r} {answer.problem or ''}"
        return None

    def serving(self) -> str | None:
        """Why a normal chat completion is not answered, or None."""
        problem = self.healthy()
        if problem is not None:
            return problem
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3}
        with self.http() as http:
            response = http.post("/chat/completions", json=body)
        if response.status_code != 200:
            return f"a normal chat completion answered {response.status_code}: {response.text[:300]}"
        try:
            ChatCompletion.model_validate_json(response.content)
        except ValidationError as exc:
            return f"a normal chat completion is not a ChatCompletion: {exc}"
        return None


CHEAP_JUDGE: dict[str, Any] = {"judge_settings": {"max_tokens": 16, "temperature": 0, "seed": 1}}


# ---------------------------------------------------------------------------------------------------------
# Valid requests, one or more per route
# ---------------------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "Say hi"}
ANSWER = {"role": "assistant", "content": "Hi!"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


def valid_chats(stream: bool) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"model": MODEL, "messages": [USER], "max_completion_tokens": 3}
    chats: list[dict[str, Any]] = [
        base,
        base
        | {
            "messages": [{"role": "system", "content": "Be brief."}, USER, ANSWER, {"role": "user", "content": "More"}],
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 7,
            "n": 2,
            "stop": ["\n", "."],
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "logit_bias": {"42": 1.5},
            "metadata": {"fuzz": "1"},
            "user": "fuzzer",
            "store": True,
        },
        base | {"logprobs": True, "top_logprobs": 2, "max_tokens": 2},
        base
        | {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
        },
        base | {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        base | {"functions": [TOOL["function"]], "function_call": "auto"},
        base | {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
        base | {"response_format": {"type": "json_object"}, "max_completion_tokens": 4},
        base | {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Hi"}]}, USER]},
    ]
    if stream:
        chats = [chat | {"stream": True} for chat in chats]
        chats[0] = chats[0] | {"stream_options": {"include_usage": True}}
    return chats


def valid_report(target: Target) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "requestedAt": now - 800,
        "receivedAt": now,
        "reqPayload": {"model": "ext-model", "messages": [USER], "metadata": {"fuzz": "1"}},
        "respPayload": {
            "id": "chatcmpl-fuzz",
            "object": "chat.completion",
            "model": "ext-model",
            "choices": [{"index": 0, "message": ANSWER, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        "statusCode": 200,
        "tags": {"fuzz": "1", "n": 2, "ok": True, "none": None},
    }


def valid_anthropic_report(target: Target) -> dict[str, Any]:
    return {
        "requestedAt": int(time.time() * 1000) - 500,
        "reqPayload": {"model": "claude-ext", "max_tokens": 10, "messages": [USER]},
        "respPayload": {
            "id": "msg_fuzz",
            "type": "message",
            "role": "assistant",
            "model": "claude-ext",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
        "statusCode": 200,
        "metadata": {"fuzz": "1"},
        "tags": {"t": "x"},
    }


def valid_entries() -> list[dict[str, Any]]:
    return [
        {"messages": [USER, ANSWER], "split": "TRAIN", "metadata": {"fuzz": "1"}},
        {
            "messages": [
                {"role": "system", "content": "Use tools."},
                USER,
                {"role": "assistant", "tool_calls": [CALL]},
            ],
            "rejected_message": {"content": "No."},
            "tools": [TOOL],
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
        },
    ]


def judge_input() -> dict[str, Any]:
    return {"messages": [USER], "tools": [TOOL], "tool_choice": "auto"}


# ---------------------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str  # unique in ROUTES: "POST /chat/completions (stream)"
    method: str
    path: str  # the app's path under the API prefix, e.g. "/datasets/{dataset_id}"
    answer: type[BaseModel] | Literal["stream", "jsonl", "metrics", "openapi", "latest", "none"]
    bodies: Callable[[Target], list[Any]] | None = None  # valid bodies; None: the route takes none
    params: Callable[[Target], dict[str, Any]] = lambda _: {}  # valid path parameters
    query: Callable[[Target], st.SearchStrategy[str]] | None = None
    prefixed: bool = True  # under /v1 and /api/v1


def _ds(t: Target) -> dict[str, Any]:
    return {"dataset_id": t.dataset_id}


def _crit(t: Target) -> dict[str, Any]:
    return {"name": t.criterion}


def _judge_bodies(t: Target) -> list[Any]:
    output = {"role": "assistant", "content": "Hello! How can I help?"}
    return [
        {"criterion_id": t.criterion, "input": judge_input(), "output": output},
        {"criterion_id": f"{t.criterion}@v1", "output": {"role": "assistant", "tool_calls": [CALL]}},
    ]


def _alignment_bodies(t: Target) -> list[Any]:
    rows = [
        {"input": judge_input(), "output": {"role": "assistant", "content": "Hello!"}, "label": "PASS"},
        {"output": {"role": "assistant", "content": "Go away."}, "label": "FAIL"},
    ]
    return [{"rows": rows, "threshold": 0.5}, {"rows": rows[:1]}]


def _from_logs_bodies(t: Target) -> list[Any]:
    return [
        {},
        {"model": MODEL, "limit": 3, "split": "TEST", "metadata": {"fuzz": "1"}},
        {"from": "2024-01-01T00:00:00+14:00", "to": int(time.time() * 1000) + 1000, "status_code": 200, "limit": 2},
    ]


def _model_bodies(t: Target) -> list[Any]:
    sft = {"num_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 0.5, "lora_rank": 4, "max_length": 256}
    return [
        {
            "datasetId": t.dataset_id,
            "slug": Fresh("name"),
            "trainingConfig": {"provider": "openpipe", "baseModel": MODEL, "sft_hyperparameters": sft},
            "pruningRuleIds": [],
        },
        {
            "datasetId": t.dataset_id,
            "slug": Fresh("name"),
            "trainingConfig": {
                "provider": "openpipe",
                "enable_preference_tuning": True,
                "preference_hyperparameters": {"variant": "APO Zero", "training_beta": 0.2, "adapter_weight": 0.5},
            },
            "evaluation": {"max_entries": 5, "criteria": [t.criterion]},
        },
    ]


ROUTES: tuple[Route, ...] = (
    Route("POST /chat/completions", "POST", "/chat/completions", ChatCompletion, lambda _: valid_chats(False)),
    Route("POST /chat/completions (stream)", "POST", "/chat/completions", "stream", lambda _: valid_chats(True)),
    Route("GET /models", "GET", "/models", ModelList),
    Route("GET /models/{id}", "GET", "/models/{model_id}", ModelCard, params=lambda _: {"model_id": MODEL}),
    Route("POST /models", "POST", "/models", ModelCard, _model_bodies),
    Route(
        "DELETE /models/{id}",
        "DELETE",
        "/models/{model_id}",
        DeletedModel,
        params=lambda _: {"model_id": Fresh("model")},
    ),
    # A queued model has no weights yet: 400s (a served model's id with `/weights` in it would answer its card).
    Route(
        "GET /models/{slug}/weights",
        "GET",
        "/models/{slug}/weights",
        WeightsList,
        params=lambda _: {"slug": Fresh("model")},
    ),
    Route(
        "GET /models/{slug}/weights/{name}",
        "GET",
        "/models/{slug}/weights/{name}",
        ModelCard,
        params=lambda _: {"slug": Fresh("model"), "name": "model.gguf"},
    ),
    Route("POST /report", "POST", "/report", ReportResponse, lambda t: [valid_report(t), {}]),
    Route("POST /report-anthropic", "POST", "/report-anthropic", ReportResponse, lambda t: [valid_anthropic_report(t)]),
    Route(
        "POST /logs/update-metadata",
        "POST",
        "/logs/update-metadata",
        UpdateResponse,
        lambda t: [
            {"filters": [{"field": "metadata.fuzz", "equals": "1"}], "metadata": {"seen": "yes", "gone": None}},
            {"filters": [{"field": "completionId", "equals": t.completion_id}], "metadata": {"one": "1"}},
        ],
    ),
    Route(
        "POST /logs/update-tags",
        "POST",
        "/logs/update-tags",
        UpdateResponse,
        lambda t: [
            {"filters": [{"field": "tags.fuzz", "equals": 1}, {"field": "model", "equals": MODEL}], "tags": {"n": 2}},
            {"filters": [], "tags": {"b": True, "x": None, "f": 1.5}},
        ],
    ),
    Route(
        "GET /local-testing-only-get-latest-logged-call",
        "GET",
        "/local-testing-only-get-latest-logged-call",
        "latest",
    ),
    Route("GET /logs", "GET", "/logs", LogList, query=lambda t: logs_queries(t)),
    Route("GET /logs/{id}", "GET", "/logs/{log_id}", Log, params=lambda t: {"log_id": t.log_id}),
    Route("GET /datasets", "GET", "/datasets", DatasetList),
    Route("POST /datasets", "POST", "/datasets", Dataset, lambda _: [{"name": "fuzz"}, {"name": "é" * 200}]),
    Route("GET /datasets/{id}", "GET", "/datasets/{dataset_id}", Dataset, params=_ds),
    Route(
        "DELETE /datasets/{id}",
        "DELETE",
        "/datasets/{dataset_id}",
        DeletedDataset,
        params=lambda _: {"dataset_id": Fresh("dataset")},
    ),
    Route(
        "POST /datasets/{id}/entries",
        "POST",
        "/datasets/{dataset_id}/entries",
        DatasetEntriesCreated,
        lambda _: [{"entries": valid_entries()}],
        params=_ds,
    ),
    Route(
        "GET /datasets/{id}/entries",
        "GET",
        "/datasets/{dataset_id}/entries",
        DatasetEntryList,
        params=_ds,
        query=lambda t: page_queries(t.entries_cursor),
    ),
    Route(
        "POST /datasets/{id}/entries/from-logs",
        "POST",
        "/datasets/{dataset_id}/entries/from-logs",
        DatasetEntriesFromLogs,
        _from_logs_bodies,
        params=lambda _: {"dataset_id": Fresh("dataset")},
    ),
    Route(
        "GET /datasets/{id}/export",
        "GET",
        "/datasets/{dataset_id}/export",
        "jsonl",
        params=_ds,
        query=lambda _: export_queries(),
    ),
    Route("GET /criteria", "GET", "/criteria", CriterionList),
    Route(
        "POST /criteria",
        "POST",
        "/criteria",
        Criterion,
        lambda _: [
            {"name": Fresh("name"), "instructions": "PASS if polite; FAIL if rude."},
            {
                "name": Fresh("name"),
                "description": "Tone",
                "instructions": "PASS if polite.",
                "judge_model": MODEL,
                "judge_settings": {"temperature": 0.5, "top_p": 0.9, "max_tokens": 16, "seed": 3},
            },
        ],
    ),
    Route("POST /criteria/judge", "POST", "/criteria/judge", JudgeResponse, _judge_bodies),
    Route("GET /criteria/{name}", "GET", "/criteria/{name}", Criterion, params=_crit),
    Route("GET /criteria/{name}/versions", "GET", "/criteria/{name}/versions", CriterionList, params=_crit),
    Route(
        "POST /criteria/{name}/versions",
        "POST",
        "/criteria/{name}/versions",
        Criterion,
        lambda _: [
            {"description": "changed"},
            {"instructions": "PASS if kind.", "judge_model": MODEL, "judge_settings": {"max_tokens": 20, "seed": None}},
        ],
        params=lambda _: {"name": Fresh("criterion")},
    ),
    Route(
        "DELETE /criteria/{name}",
        "DELETE",
        "/criteria/{name}",
        DeletedCriterion,
        params=lambda _: {"name": Fresh("criterion")},
    ),
    Route(
        "POST /criteria/{name}/alignment",
        "POST",
        "/criteria/{name}/alignment",
        Alignment,
        _alignment_bodies,
        params=_crit,
    ),
    Route("GET /health", "GET", "/health", Health, prefixed=False),
    Route("GET /metrics", "GET", "/metrics", "metrics", prefixed=False),
    Route("GET /openapi.json", "GET", "/openapi.json", "openapi", prefixed=False),
    # Paths and methods the app doesn't have: a 404 or 405 in OpenAI's shape.
    Route("unknown route or method", "*", "*", "none"),
)
ROUTES_BY_NAME = {route.name: route for route in ROUTES}
# How often a long run draws each route, relative to the others: most of the server is behind chat completions.
WEIGHTS = {"POST /chat/completions": 5, "POST /chat/completions (stream)": 4, "GET /logs": 2}


# ---------------------------------------------------------------------------------------------------------
# Strategies: values
# ---------------------------------------------------------------------------------------------------------

# fmt: off
NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "a\udfffb", "\ufeff", "\u202e", "😀", "NaN", "Infinity", "-1", "1e309",
    "0x10", "\u0663", "null", "true", "{}", "[]", '{"a": 1}', "%00", "../..", "<script>", "' OR 1=1 --", '"', "\\",
    "\n\r\t", "$.a", "a.b", "a[0]",
]
NASTY_NUMBERS: list[Any] = [
    0, -1, 1, 2, 17, 255, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    -(10**30), 0.5, -0.0, 1.0, 1e-320, 1.7976931348623157e308, -1e308, Raw("1e400"), Raw("-1e400"), Raw("NaN"),
    Raw("Infinity"), Raw("-0"), Raw("1E+2"), Raw("1." + "0" * 400), Raw("9" * 500),
]
# fmt: on

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NASTY_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=12),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
HUGE_SIZES = [1_000, 70_000, 1_100_000, MAX_BYTES + 100_000]


@st.composite
def huge_strings(draw: st.DrawFn) -> str:
    size = draw(st.sampled_from(HUGE_SIZES))
    unit = draw(st.sampled_from(["x", "é", "😀", "\x00", "\\", "\ud800", "Hi there. "]))
    return (unit * (size // len(unit.encode("utf-8", "surrogatepass")) + 1))[:size]


@st.composite
def deep(draw: st.DrawFn) -> Raw:
    """Nesting around the server's depth limit and far past it (orjson's own limit is 1024)."""
    depth = draw(st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200, 1100, 100_000]))
    return nested(depth, draw(st.sampled_from(["1", '"x"', "{}", "null"])), draw(st.sampled_from(["[", "{"])))


# ---------------------------------------------------------------------------------------------------------
# Strategies: mutations of a valid body
# ---------------------------------------------------------------------------------------------------------

Path = tuple[Any, ...]


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def get_at(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def set_at(value: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    get_at(value, path[:-1])[path[-1]] = new
    return value


MUTATIONS = [
    "delete",
    "retype",
    "retype",
    "unknown key",
    "wrap",
    "duplicate",
    "huge string",
    "empty",
    "number",
    "deep",
    "nul or surrogate",
    "many",
]


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` after one to three mutations, each at a drawn place."""
    value = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in paths(value) if not isinstance(get_at(value, p), Raw | Pairs)]
        if not places:
            break
        path = draw(st.sampled_from(places))
        node = get_at(value, path)
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "delete":
            if path and isinstance(get_at(value, path[:-1]), dict | list):
                del get_at(value, path[:-1])[path[-1]]
            continue
        if kind == "retype":
            new: Any = draw(json_values)
        elif kind == "unknown key":
            if not isinstance(node, dict):
                continue
            node[draw(st.sampled_from(["unknown", "", "$ref", "__proto__", "constructor", "a.b"]))] = draw(json_values)
            continue
        elif kind == "wrap":
            new = draw(st.sampled_from([[node], {"value": node}, [node, node]]))
        elif kind == "duplicate":
            if isinstance(node, list) and node:
                new = [*node, node[draw(st.integers(0, len(node) - 1))]]
            elif isinstance(node, dict) and node:
                key = draw(st.sampled_from(sorted(node)))
                twin = draw(st.one_of(st.just(node[key]), json_values))
                items = list(node.items())
                items.insert(draw(st.integers(0, len(items))), (key, twin))
                new = Pairs(tuple(items))
            else:
                continue
        elif kind == "huge string":
            new = draw(huge_strings())
        elif kind == "empty":
            new = draw(st.sampled_from(["", [], {}, None, 0]))
        elif kind == "number":
            if isinstance(node, bool) or not isinstance(node, int | float):
                new = draw(st.sampled_from(NASTY_NUMBERS))
            else:
                new = draw(
                    st.sampled_from([-node, node * 1000, node + 0.5, float(node), node * 2**40, 0, *NASTY_NUMBERS])
                )
        elif kind == "deep":
            new = draw(deep())
        elif kind == "nul or surrogate":
            base = node if isinstance(node, str) else "x"
            new = draw(st.sampled_from([base + "\x00", "\ud800" + base, base + "\udc00", base[:1] + "\x00" + base[1:]]))
        else:  # many: a list or an object grown past the limits on counts
            count = draw(st.sampled_from([5, 17, 65, 129, 1001, 2049]))
            if isinstance(node, list) and node:
                new = [node[i % len(node)] for i in range(count)]
            elif isinstance(node, dict):
                new = {**node, **{f"k{i}": "v" for i in range(count)}}
            else:
                new = [node] * count
        value = set_at(value, path, new)
    return value


@st.composite
def scratch_bodies(draw: st.DrawFn, valid: Any) -> Any:
    """Bodies made from nothing: random objects with the route's keys, JSON that is no object, no JSON at all."""
    keys = sorted(valid) if isinstance(valid, dict) else []
    kind = draw(st.sampled_from(["object", "object", "not an object", "bytes", "empty", "deep", "huge"]))
    if kind == "object":
        names = st.sampled_from(keys) | st.text(max_size=8) if keys else st.text(max_size=8)
        return draw(st.dictionaries(names, json_values, max_size=6))
    if kind == "not an object":
        return draw(st.one_of(scalars, st.lists(json_values, max_size=3)))
    if kind == "bytes":
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from(
                    [
                        b"{",
                        b"{}}",
                        b'{"a": 1,}',
                        b"{'a': 1}",
                        b'{"a": NaN}',
                        b'{"a": "\xed\xa0\x80"}',
                        b'{"a": "\xff\xfe"}',
                        b'\xef\xbb\xbf{"a": 1}',
                        b'{"a": "\\ud800"}',
                        b'{"a": "\\u0000"}',
                        b"\x00",
                        b"null",
                        b'{"a": 1} {"b": 2}',
                        b"[" * 2000,
                        b"model=x&messages=y",
                        '{"名前": "値"}'.encode("utf-16"),
                    ]
                ),
            )
        )
    if kind == "empty":
        return draw(st.sampled_from([b"", b" ", b"\r\n", None]))
    if kind == "deep":
        return draw(deep())
    return {"padding": draw(huge_strings())}


@st.composite
def bodies(draw: st.DrawFn, valid_bodies: Sequence[Any]) -> Any:
    valid = draw(st.sampled_from(list(valid_bodies)))
    how = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "mutated", "scratch", "scratch"]))
    if how == "valid":
        return valid
    if how == "mutated":
        return draw(mutated(valid))
    return draw(scratch_bodies(valid))


# ---------------------------------------------------------------------------------------------------------
# Strategies: headers, paths, query strings
# ---------------------------------------------------------------------------------------------------------

CONTENT_TYPES = [
    b"text/plain",
    b"application/json; charset=utf-16",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"application/json\xff",
    b"",
]
AUTHORIZATIONS = [
    b"Bearer",
    b"Bearer ",
    b"Bearer wrong-key",
    b"bearer {key}",
    b"Bearer   {key}  ",
    b"Bearer {key}x",
    b"Basic {key}",
    b"{key}",
    b"Bearer \xff\xfe",
    b"Bearer " + b"k" * 6000,
    b"Bearer {key} {key}",
]
OP_HEADERS: dict[str, list[bytes]] = {
    "op-log-request": [b"true", b"false", b"1", b"0", b"TRUE", b"yes", b"", b"\xff", b"2"],
    "op-cache": [b"readWrite", b"readonly", b"WRITEONLY", b"true", b"false", b"maybe", b"", b"\xe9"],
    "op-tags": [
        b'{"fuzz": "1", "n": 3, "b": true, "x": null}',
        b"{}",
        b"[]",
        b'"x"',
        b"{",
        b'{"a": {"b": 1}}',
        b'{"a": [1]}',
        b'{"a": "\\u0000"}',
        b'{"a": "\\ud800"}',
        b'{"\xc3\xa9": "\xc3\xa9"}',
        b'{"a": 1e400}',
        b'{"a": 1, "a": 2}',
        orjson.dumps({f"k{i}": i for i in range(70)}),
        orjson.dumps({"long": "v" * 7000}),
        nested(100).text.encode(),
    ],
    "op-criteria": [
        b'["{crit}"]',
        b'["{crit}@v1"]',
        b'["{crit}@v999"]',
        b'["{crit}@v0"]',
        b'["{crit}", "{crit}"]',
        b'["nope"]',
        b"[]",
        b'"{crit}"',
        b"[1]",
        b"[null]",
        b"{",
        b'[""]',
        b'["@v1"]',
        b'["{crit}@v99999999999999999999"]',
        b'["{crit}@v-1"]',
    ],
}


# Bytes a header value may hold (HTTP's field-vchar, obs-text and inner spaces): anything else is refused by the
# HTTP server before the app sees it.
header_bytes = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F) or b"x")


@st.composite
def header_sets(draw: st.DrawFn, target: Target, route: Route) -> tuple[tuple[str, bytes], ...]:
    headers: list[tuple[str, bytes]] = []
    if route.bodies is not None or draw(st.integers(0, 9)) == 0:
        headers.append(("Content-Type", b"application/json"))
    if target.key is not None:
        headers.append(("Authorization", b"Bearer {key}"))
    if draw(st.integers(0, 2)) == 0:
        # one or two headers changed, dropped or added
        for _ in range(draw(st.integers(1, 2))):
            kind = draw(st.sampled_from(["content-type", "authorization", "op", "op", "drop", "unknown", "twice"]))
            if kind == "content-type":
                headers = [h for h in headers if h[0] != "Content-Type"]
                headers.append(("Content-Type", draw(st.sampled_from(CONTENT_TYPES))))
            elif kind == "authorization":
                headers = [h for h in headers if h[0] != "Authorization"]
                headers.append(("Authorization", draw(st.sampled_from(AUTHORIZATIONS))))
            elif kind == "op" or kind == "twice":
                name = draw(st.sampled_from(sorted(OP_HEADERS)))
                value = draw(st.sampled_from(OP_HEADERS[name])).replace(b"{crit}", target.criterion.encode())
                headers.append((name, value))
                if kind == "twice":
                    again = draw(st.sampled_from(OP_HEADERS[name]))
                    headers.append((name, again.replace(b"{crit}", target.criterion.encode())))
            elif kind == "drop" and headers:
                headers.pop(draw(st.integers(0, len(headers) - 1)))
            elif kind == "unknown":
                headers.append(("X-Fuzz", draw(header_bytes)))
    elif route.answer in (ChatCompletion, "stream") and draw(st.booleans()):
        # valid op-* headers: the request goes on to log, cache and judge
        for name, choices in (
            ("op-log-request", [b"true", b"false"]),
            ("op-cache", [b"readWrite", b"readOnly", b"writeOnly", b"false"]),
            ("op-tags", [b'{"fuzz": "1"}']),
            ("op-criteria", [b'["{crit}"]', b'["{crit}@v1"]']),
        ):
            if draw(st.booleans()):
                headers.append((name, draw(st.sampled_from(choices)).replace(b"{crit}", target.criterion.encode())))
    return tuple(headers)


# fmt: off
NASTY_SEGMENTS = [
    "x", "ds_nope", "crit_nope", "log_nope", "%00", "a%00b", "%2F", "..", "%ff", "%C3%A9", "%F0%9F%98%80", "a" * 3000,
    "%20", "name@v0", "name@v1", "name@v-1", "name@v99999999999999999999", "name@v1e3", "@v1", "name@", "name@@v1",
    "judge", "null", "%7B%7D",
]
# fmt: on


@st.composite
def path_values(draw: st.DrawFn, valid: Any, target: Target) -> Any:
    if draw(st.integers(0, 2)) > 0:
        return valid if isinstance(valid, Fresh) else quote(str(valid), safe="@:")
    kind = draw(st.sampled_from(["nasty", "nasty", "other id", "versioned"]))
    if kind == "nasty":
        return draw(st.sampled_from(NASTY_SEGMENTS))
    if isinstance(valid, Fresh):
        # A route that deletes or changes what its path names never gets the target's own dataset or criterion,
        # which the other routes' valid requests name.
        return draw(st.sampled_from([target.log_id, target.completion_id, MODEL, "x@v1"]))
    if kind == "other id":
        return draw(st.sampled_from([target.dataset_id, target.log_id, target.criterion, target.completion_id, MODEL]))
    version = draw(st.sampled_from(["@v1", "@v2", "@v0", "@v-3", "@v999999999999999999999", "@vx", "@V1"]))
    return quote(target.criterion + version, safe="@")


# fmt: off
TIMES = [
    "2024-05-01", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00+14:00", "2024-05-01T12:00:00-12:00",
    "2024-05-01T12:00:00.123456+05:45", "2024-05-01T12:00:00+23:59", "2024-05-01T12:00:00+24:00",
    "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00",
    "1970-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", "2024-02-30", "2024-05-01 12:00", "20240501T120000Z", "0",
    "1714564800000", "253402300799999", "253402300800000", "-1", "99999999999999999999999", "1e12", "NaN", "inf", "",
    " 2024-05-01 ", "\u0662\u0660\u0662\u0664-\u0660\u0665-\u0660\u0661", "yesterday",
]
INTS = ["0", "1", "50", "1000", "1001", "-1", "2_0", "+5", " 5 ", "\u0665", "1e3", "abc", "", "9" * 20, "5.0"]
CRITERIA_CONDITIONS = [
    "criteria.{crit}.score<0.5", "criteria.{crit}.score<=1", "criteria.{crit}.score>=0", "criteria.{crit}.score!=0.5",
    "criteria.{crit}.score=1", "criteria.{crit}.score>nan", "criteria.{crit}.score<inf", "criteria.{crit}.score<1e400",
    "criteria.{crit}.score<abc", "criteria.{crit}.score<", "criteria.{crit}.status=success",
    "criteria.{crit}.status!=error", "criteria.{crit}.status<error", "criteria.{crit}.status=maybe", "criteria.{crit}",
    "criteria..score<1", "criteria.a.b.score<1", "criteria.x%00.score<1", "criteria." + "n" * 80 + ".score<1",
]
# fmt: on


def _encoded(text: str, how: str) -> str:
    """`text` as a query string spells it: URL-encoded (a `+` as `%2B`), or with nothing encoded but what a
    request line can't hold (a `+` then reads as a space)."""
    raw = text.encode("utf-8", "surrogatepass")
    if how == "encoded":
        return quote_plus(raw, safe="")
    return quote(raw, safe="+<>=!:@[]/,;$'()*~.")


@st.composite
def query_pairs(draw: st.DrawFn, names: dict[str, list[str]], target: Target, extra: Sequence[str] = ()) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(sorted(names)))
        value = draw(st.sampled_from(names[name]) | st.sampled_from(NASTY_STRINGS) | st.text(max_size=6))
        how = draw(st.sampled_from(["encoded", "raw"]))
        parts.append(f"{_encoded(name, how)}={_encoded(value, how)}")
    for text in extra:
        parts.append(_encoded(text.replace("{crit}", target.criterion), draw(st.sampled_from(["encoded", "raw"]))))
    if draw(st.integers(0, 9)) == 0:
        # far more parameters than the limit allows: max_filters and SQL expression depth
        count = draw(st.sampled_from([65, 1001]))
        parts += [f"metadata.k{i}=v" for i in range(count)]
    if draw(st.integers(0, 19)) == 0:
        parts.append(draw(st.sampled_from(["&&", "=", "a", "%", "%zz", "a=%ff", "x" * 5000 + "=1", "a=1&a=2"])))
    order = draw(st.permutations(parts)) if parts else []
    return "&".join(order)


def logs_queries(target: Target) -> st.SearchStrategy[str]:
    names = {
        "model": [MODEL, "ext-model", "", "x" * 300],
        "status_code": ["200", "400", *INTS],
        "status": ["200", "-5"],
        "from": TIMES,
        "since": TIMES,
        "to": TIMES,
        "until": TIMES,
        "limit": INTS,
        "cursor": [
            target.cursor,
            target.cursor[:-2],
            target.cursor + "AA",
            "WzEsMl0=",
            "MTox",
            "Og==",
            "!!",
            "a" * 5000,
        ],
        "metadata.fuzz": ["1", ""],
        "metadata[fuzz]": ["1"],
        "metadata.": ["1"],
        "metadata[]": ["1"],
        'metadata.a"b': ["1"],
        "metadata.$.x": ["1"],
        "unknown": ["1"],
    }
    return st.lists(st.sampled_from(CRITERIA_CONDITIONS), max_size=2).flatmap(
        lambda conditions: query_pairs(names, target, conditions)
    )


def page_queries(cursor: str) -> st.SearchStrategy[str]:
    names = {"limit": INTS, "cursor": [cursor, cursor[:-3], "Og==", "MTox", "x", "\x00"], "unknown": ["1"]}
    return query_pairs(names, Target("http://x:1", None))


def export_queries() -> st.SearchStrategy[str]:
    names = {"split": ["TRAIN", "test", "Train", "both", ""], "format": ["sft", "preference", "PREFERENCE", "csv", ""]}
    return query_pairs(names, Target("http://x:1", None))


# ---------------------------------------------------------------------------------------------------------
# Strategies: whole requests
# ---------------------------------------------------------------------------------------------------------

UNKNOWN_PATHS = ["/v1", "/v1/", "/v2/models", "/v1/chat", "/v1/chat/completions/x", "/api/v1/logs/", "/", "/%00",
                 "/v1/datasets//entries", "/health/x", "//v1/models", "/v1/models/", "/v1/criteria/x/y"]  # fmt: skip


def cheapen(route: Route, body: Any) -> Any:
    """Keep drawn requests quick to answer: budgets of generation and of judges cut to a few tokens, at most
    two judged rows, at most 50 logs read into a dataset. Only valid values are cut, so what the validator sees
    is otherwise as drawn."""
    if not isinstance(body, dict):
        return body
    if route.answer in (ChatCompletion, "stream"):
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and CHEAP_TOKENS < value <= 1_000_000:
                body[key] = CHEAP_TOKENS
        budget = body.get("max_completion_tokens", body.get("max_tokens"))
        if budget is None or isinstance(budget, Raw):
            body["max_completion_tokens"] = CHEAP_TOKENS
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and 4 < n <= 16:
            body["n"] = 4
    settings = body.get("judge_settings")
    if isinstance(settings, dict):
        tokens = settings.get("max_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool) and 16 < tokens <= 8192:
            settings["max_tokens"] = 16
    limit = body.get("limit")
    if route.path.endswith("/from-logs") and (limit is None or (type(limit) is int and limit > 50)):
        body["limit"] = 50  # else every log of the project is read, and fuzzed logs hold megabyte payloads
    rows = body.get("rows")
    if isinstance(rows, list) and len(rows) > 2 and route.path.endswith("/alignment"):
        body["rows"] = rows[:2]
    return body


# A report's tags get this key, with a value of its own, so that its log can be found and read back.
TRACK = "fuzz-track"
REPORTS = ("POST /report", "POST /report-anthropic")


def tracked(route: Route, body: Any) -> Any:
    if route.name in REPORTS and isinstance(body, dict) and isinstance(body.get("tags", {}), dict):
        body["tags"] = {**body.get("tags", {}), TRACK: Fresh("name")}
    return body


@st.composite
def drafts(draw: st.DrawFn, route: Route, target: Target) -> Draft:
    """A request for `route`."""
    if route.method == "*":
        return draw(unknown_requests(target))
    prefix = draw(st.sampled_from(["/v1", "/api/v1"])) if route.prefixed else ""
    segments: list[Any] = [s for s in (prefix + route.path).split("/") if s]
    valid_params = route.params(target)
    for i, segment in enumerate(segments):
        if segment.startswith("{"):
            segments[i] = draw(path_values(valid_params[segment[1:-1]], target))
    query = draw(route.query(target)) if route.query is not None else ""
    if route.query is None and draw(st.integers(0, 9)) == 0:
        query = draw(st.sampled_from(["x=1", "stream=true", "%00=%00", "a" * 3000]))
    body: Any = None
    if route.bodies is not None:
        body = tracked(route, cheapen(route, draw(bodies(route.bodies(target)))))
    elif draw(st.integers(0, 9)) == 0:
        body = draw(json_values)  # a GET with a body: ignored
    framing: Framing = "exact"
    if draw(st.integers(0, 5)) == 0:
        framing = draw(st.sampled_from(["chunked", "chunked", "short", "long", "huge", "none"]))
    return Draft(
        route=route.name,
        method=route.method,
        path=tuple(segments),
        query=query,
        headers=draw(header_sets(target, route)),
        body=body,
        framing=framing,
        ascii_only=draw(st.booleans()),
        spaced=draw(st.booleans()),
    )


@st.composite
def unknown_requests(draw: st.DrawFn, target: Target) -> Draft:
    routes = [r for r in ROUTES if r.method != "*"]
    if draw(st.booleans()):
        # a known path with a method it doesn't take
        route = draw(st.sampled_from(routes))
        taken = {r.method for r in routes if r.path == route.path}
        method = draw(st.sampled_from([m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m not in taken]))
        prefix = "/v1" if route.prefixed else ""
        params = {name: quote(str(v)) if not isinstance(v, Fresh) else "x" for name, v in route.params(target).items()}
        path = tuple(s.format(**params) for s in (prefix + route.path).split("/") if s)
    else:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT"]))
        path = tuple(draw(st.sampled_from(UNKNOWN_PATHS)).split("/")[1:])
    headers: list[tuple[str, bytes]] = [("Content-Type", b"application/json")]
    if target.key is not None:
        headers.append(("Authorization", b"Bearer {key}"))
    body = draw(st.one_of(st.none(), json_values))
    return Draft("unknown route or method", method, path, "", tuple(headers), body)


# ---------------------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------------------


def unknown_keys(instance: Any, data: Any, where: str = "") -> list[str]:
    """Keys in `data` that the wire model it validated as does not declare, at any depth."""
    found: list[str] = []
    if isinstance(instance, BaseModel) and isinstance(data, dict):
        fields = type(instance).model_fields
        names = {info.alias or name: name for name, info in fields.items()} | {name: name for name in fields}
        for key, value in data.items():
            if key not in names:
                found.append(f"{where}.{key}" if where else key)
            else:
                found += unknown_keys(getattr(instance, names[key]), value, f"{where}.{key}" if where else key)
    elif isinstance(instance, list) and isinstance(data, list):
        for i, (item, raw) in enumerate(zip(instance, data, strict=False)):
            found += unknown_keys(item, raw, f"{where}[{i}]")
    elif isinstance(instance, dict) and isinstance(data, dict):
        for key, item in instance.items():
            found += unknown_keys(item, data.get(key), f"{where}.{key}")
    return found


def check_model(model: type[BaseModel], content: bytes) -> list[str]:
    try:
        data = orjson.loads(content)
        instance = model.model_validate(data)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        return [f"the 2xx body is not a valid {model.__name__}: {str(exc)[:600]}"]
    extra = unknown_keys(instance, data)
    return [f"the 2xx body has keys {model.__name__} does not declare: {extra[:5]}"] if extra else []


def check_error(answer: Answer) -> list[str]:
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return [f"the {answer.status} body is not JSON: {answer.body[:300]!r}"]
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return [f"the {answer.status} body is not {{'error': {{...}}}}: {answer.body[:300]!r}"]
    error = data["error"]
    problems = []
    if set(error) != ERROR_KEYS:
        problems.append(f"the error's keys are {sorted(error)}, not {sorted(ERROR_KEYS)}")
    if not isinstance(error.get("message"), str) or not error["message"].strip():
        problems.append("the error has no message")
    if not isinstance(error.get("type"), str):
        problems.append("the error's type is not a string")
    if error.get("param") is not None and not isinstance(error["param"], str):
        problems.append("the error's param is neither a string nor null")
    if error.get("code") is not None and not isinstance(error["code"], str):
        problems.append("the error's code is neither a string nor null")
    if answer.content_type != "application/json":
        problems.append(f"the error's Content-Type is {answer.content_type!r}")
    return problems


def check_stream(answer: Answer) -> list[str]:
    if answer.content_type != "text/event-stream":
        return [f"a stream's Content-Type is {answer.content_type!r}"]
    events = [e for e in answer.body.decode("utf-8", "replace").split("\n\n") if e.strip()]
    if not events or events[-1].strip() != "data: [DONE]":
        return [f"the stream does not end with data: [DONE]: ...{answer.body[-300:]!r}"]
    problems: list[str] = []
    for i, event in enumerate(events[:-1]):
        if not event.startswith("data: "):
            problems.append(f"event {i} is not a data event: {event[:200]!r}")
            continue
        payload = event[len("data: ") :].encode()
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            problems.append(f"event {i} is not JSON: {event[:200]!r}")
            continue
        if isinstance(data, dict) and "error" in data:
            if i != len(events) - 2:
                problems.append(f"error event {i} is not the last before [DONE]")
            problems += check_error(Answer(400, {"content-type": "application/json"}, payload, 0.0))
        else:
            problems += [f"event {i}: {p}" for p in check_model(ChatCompletionChunk, payload)]
    return problems


def check_jsonl(answer: Answer) -> list[str]:
    problems = []
    if answer.content_type != "application/jsonl":
        problems.append(f"an export's Content-Type is {answer.content_type!r}")
    for i, line in enumerate(answer.body.splitlines()):
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            return [*problems, f"export line {i} is not JSON: {line[:200]!r}"]
        if not isinstance(data, dict) or not ({"messages"} <= set(data) or {"input", "preferred_output"} <= set(data)):
            problems.append(f"export line {i} is neither an SFT nor a preference example: {line[:200]!r}")
    return problems


def check_metrics(answer: Answer) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        list(text_string_to_metric_families(answer.body.decode()))
    except Exception as exc:  # any parse failure is the finding
        return [f"/metrics is not Prometheus text: {exc!r}"]
    return []


# Framings that lie about the body: the bytes after the declared length read as a second request (garbage).
LIES = ("short", "long", "huge", "none")


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def check_answer(route: Route, sent: Sent, answer: Answer) -> list[str]:
    """Everything wrong with `answer` to `sent`; empty when the server behaved."""
    if answer.problem is not None:
        return [answer.problem]
    status = answer.status
    if status is None:
        # A client that lies about its body's length may find the connection closed without an answer.
        return [] if sent.framing in LIES else ["the connection closed without an answer"]
    if status >= 500:
        return [f"answered {status}: {answer.body[:500]!r}"]
    if 400 <= status < 500:
        if status == 499 and sent.framing == "long":
            return []  # the client stopped sending: the server noted that it left
        if status == 400 and answer.content_type == "text/plain" and sent.framing in LIES:
            return []  # the HTTP server itself refused what followed the body (uvicorn's own 400)
        return check_error(answer)
    if not 200 <= status < 300:
        return [f"answered {status}"]
    problems: list[str] = []
    if route.bodies is not None and sent.body_object() is None and sent.framing in ("exact", "chunked"):
        problems.append("a body that is not a JSON object was accepted")
    if route.answer == "stream":
        stream_asked = (sent.body_object() or {}).get("stream") is True
        problems += check_stream(answer) if stream_asked else check_model(ChatCompletion, answer.body)
    elif route.answer == ChatCompletion and (sent.body_object() or {}).get("stream") is True:
        problems += check_stream(answer)
    elif route.answer == "jsonl":
        problems += check_jsonl(answer)
    elif route.answer == "metrics":
        problems += check_metrics(answer)
    elif route.answer == "openapi":
        if not isinstance((data := _json(answer.body)), dict) or "paths" not in data:
            problems.append(f"/openapi.json is not an OpenAPI document: {answer.body[:200]!r}")
    elif route.answer == "latest":
        if answer.body.strip() != b"null":
            problems += check_model(LatestLoggedCall, answer.body)
    elif route.answer == "none":
        problems.append(f"an unknown route or method answered {status}")
    elif isinstance(route.answer, type):
        problems += check_model(route.answer, answer.body)
    return problems or check_consistency(route, sent, answer)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def check_consistency(route: Route, sent: Sent, answer: Answer) -> list[str]:
    """What a valid 2xx must also hold: as many choices as asked, usage that adds up, no more completion tokens
    than the budget, pages that say whether more follow."""
    body = sent.body_object() or {}
    data = _json(answer.body)
    if route.answer in (ChatCompletion, "stream") and answer.content_type == "application/json":
        return check_counts(body, data.get("choices", []), data.get("usage"))
    if route.answer in (ChatCompletion, "stream") and answer.content_type == "text/event-stream":
        chunks = [_json(e[len("data: ") :].encode()) for e in answer.body.decode().split("\n\n") if e.strip()][:-1]
        if any("error" in chunk for chunk in chunks):
            return []
        finished = [c for chunk in chunks for c in chunk["choices"] if c.get("finish_reason") is not None]
        usage = [chunk["usage"] for chunk in chunks if chunk.get("usage") is not None]
        problems = check_counts(body, finished, usage[-1] if usage else None)
        wants_usage = (body.get("stream_options") or {}).get("include_usage") is True
        if wants_usage != bool(usage):
            problems.append(f"include_usage is {wants_usage} but {len(usage)} chunks carry a usage")
        return problems
    paged = route.answer in (LogList, DatasetEntryList) and isinstance(data, dict)
    if paged and data["has_more"] != (data["next_cursor"] is not None):
        return [f"has_more is {data['has_more']} but next_cursor is {data['next_cursor']!r}"]
    return []


def check_counts(body: dict[str, Any], choices: list[Any], usage: Any) -> list[str]:
    """Choices (or the chunks that finish them) and usage against the request's `n` and token budget."""
    n = _int(body.get("n")) or 1
    problems = []
    if sorted(choice.get("index") for choice in choices) != list(range(n)):
        problems.append(f"n is {n} but the choices are {[choice.get('index') for choice in choices]}")
    if isinstance(usage, dict):
        if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            problems.append(f"usage does not add up: {usage}")
        budget = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens"))
        if budget is not None and usage["completion_tokens"] > n * budget:
            problems.append(f"{usage['completion_tokens']} completion tokens for n={n} and a budget of {budget}")
    return problems


@dataclass
class Outcome:
    sent: Sent
    answer: Answer
    problems: list[str]
    server_log: str = ""


def run_one(target: Target, draft: Draft, log_tail: Callable[[], str] | None = None) -> Outcome:
    """Send one drawn request, judge its answer, and check the server is still healthy."""
    route = ROUTES_BY_NAME[draft.route]
    sent = target.resolve(draft)
    answer = target.send(sent)
    problems = check_answer(route, sent, answer)
    if not problems and route.name in REPORTS and answer.status == 200:
        problems += check_read_back(target, sent)
    unwell = target.healthy()
    if unwell is not None:
        problems.append(f"after it: {unwell}")
    return Outcome(sent, answer, problems, log_tail() if problems and log_tail is not None else "")


def check_read_back(target: Target, sent: Sent) -> list[str]:
    """An accepted report is stored as it was sent: its log is found by its tag and holds the payloads."""
    body = sent.body_object() or {}
    tags = body.get("tags")
    if not isinstance(tags, dict) or not isinstance(tags.get(TRACK), str):
        return []
    query = "metadata." + quote_plus(TRACK) + "=" + quote_plus(tags[TRACK])
    answer = target.send(Sent("GET /logs", "GET", f"/v1/logs?{query}".encode(), _auth(target), None, "exact"))
    if answer.status != 200:
        return [f"reading the report back answered {answer.status}: {answer.body[:300]!r}"]
    found = (_json(answer.body) or {}).get("data") or []
    if len(found) != 1:
        return [f"reading the report back found {len(found)} logs"]
    log = found[0]
    wanted = {"request": body.get("reqPayload"), "response": body.get("respPayload")}
    wanted["status_code"] = body.get("statusCode")
    differ = [name for name, value in wanted.items() if log.get(name) != value]
    return [f"the report's {name} was read back changed: {str(log.get(name))[:200]}" for name in differ]


def _auth(target: Target) -> tuple[tuple[str, bytes], ...]:
    return (("Authorization", f"Bearer {target.key}".encode()),) if target.key else ()


class LogReader:
    """What the server wrote to its log since the last call: the traceback of a failure."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def __call__(self) -> str:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            new = log.read()
        self.offset += len(new)
        return new.decode("utf-8", "replace")[-6000:]

    def skip(self) -> None:
        self.offset = self.path.stat().st_size
