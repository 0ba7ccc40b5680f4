"""The two lean processes of `bench/gateway.py`: a fake OpenAI-compatible upstream and a load client.

Both are raw asyncio (uvloop where installed) HTTP/1.1 with keep-alive, so that what they cost per request is
small against what a gateway costs: the fake answers a fixed completion (JSON, or five SSE events plus usage
and `[DONE]` in chunked encoding, as the request's `stream` says), the client keeps one connection per
concurrent slot and times each request to the last byte (and, streamed, to the first content).

    python bench/gateway_load.py upstream --port 8100
    python bench/gateway_load.py client --port 8100 --path /v1/chat/completions --concurrency 64 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, cast

PIECES = ["Hello", " there", ",", " how can I", " help?"]
MARK = b"Hello"  # the first content piece: its arrival is the time to first token
PROMPT_TOKENS = 21


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


# --- the fake upstream ---------------------------------------------------------------------------------------
def _chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "fake", **extra}
    data = b"data: " + json.dumps({**body, "choices": choices}).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _events(usage: bool) -> list[bytes]:
    events = [_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [_chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in PIECES]
    events.append(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage:
        counts = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(PIECES)}
        events.append(_chunk([], usage={**counts, "total_tokens": PROMPT_TOKENS + len(PIECES)}))
    done = b"data: [DONE]\n\n"
    events.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return events


def _whole(status: str, content_type: bytes, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: ".encode() + content_type
    return head + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body


COMPLETION = _whole(
    "200 OK",
    b"application/json",
    json.dumps(
        {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": 1,
            "model": "fake",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(PIECES)}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(PIECES), "total_tokens": 26},
        }
    ).encode(),
)
MODELS = _whole("200 OK", b"application/json", b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
NOT_FOUND = _whole("404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
STREAMS = {usage: _events(usage) for usage in (False, True)}


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # every whole request in the buffer (clients don't pipeline, but cheap to allow)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
            self.answer(head.split(" ", 2), body)

    def answer(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == "GET" and path.endswith("/models"):
            self.transport.write(MODELS)
        elif method == "POST" and path.endswith("/chat/completions"):
            request = json.loads(body)
            if not request.get("stream"):
                self.transport.write(COMPLETION)
                return
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            self.transport.write(STREAM_HEAD)
            for event in STREAMS[usage]:  # one write per event, as a server generating tokens would
                self.transport.write(event)
        else:
            self.transport.write(NOT_FOUND)


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    print(f"fake upstream on http://127.0.0.1:{port}/v1", flush=True)
    await server.serve_forever()


# --- the load client -----------------------------------------------------------------------------------------
class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # seconds, of the requests completed inside the measured window
        self.ttfts: list[float] = []
        self.errors: list[str] = []
        self.ok = 0  # every 200 answer, warm-up included


async def _read_answer(reader: asyncio.StreamReader, started: float) -> tuple[int, bool, float | None]:
    """Read one response to its last byte: (status, keep the connection, seconds to the first content)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    keep = "connection: close" not in head
    first: float | None = None
    if "transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                break
            data = await reader.readexactly(size + 2)
            if first is None and MARK in data:
                first = time.perf_counter() - started
    elif "content-length:" in head:
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
        data = await reader.readexactly(length)
        if MARK in data:
            first = time.perf_counter() - started
    else:
        data = await reader.read()
        keep = False
        if MARK in data:
            first = time.perf_counter() - started
    return status, keep, first


async def run_client(args: argparse.Namespace) -> Result:
    body = args.body.encode()
    head = [f"POST {args.path} HTTP/1.1", f"host: 127.0.0.1:{args.port}", "content-type: application/json"]
    head += [f"authorization: Bearer {args.key}"] if args.key else []
    head += args.header
    head += [f"content-length: {len(body)}", "", ""]
    request = "\r\n".join(head).encode() + body
    result = Result()
    begin = time.perf_counter()
    measure_from, until = begin + args.warm, begin + args.warm + args.seconds

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < until:
            try:
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", args.port, limit=1 << 20)
                reader, writer = connection
                started = time.perf_counter()
                writer.write(request)
                status, keep, first = await _read_answer(reader, started)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                result.errors.append(repr(exc))
                connection = None
                await asyncio.sleep(0.01)
                continue
            ended = time.perf_counter()
            result.ok += status == 200
            if status != 200 or first is None:
                result.errors.append(f"status {status}" if status != 200 else "no content in the answer")
            elif measure_from <= ended <= until:  # completions in the window: unbiased when latency ~ window
                result.latencies.append(ended - started)
                result.ttfts.append(first)
            if not keep:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    up = sub.add_parser("upstream", help="serve the fake upstream")
    up.add_argument("--port", type=int, required=True)
    client = sub.add_parser("client", help="run one block of load; prints JSON")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--path", default="/v1/chat/completions")
    client.add_argument("--body", required=True, help="the JSON request body")
    client.add_argument("--key", default="", help="an API key, sent as `Authorization: Bearer`")
    client.add_argument("--header", action="append", default=[], help="an extra header, `name: value`")
    client.add_argument("--concurrency", type=int, default=1)
    client.add_argument("--warm", type=float, default=0.5, help="seconds of load before measuring")
    client.add_argument("--seconds", type=float, default=3.0, help="seconds measured")
    args = parser.parse_args(argv)
    use_uvloop()
    if args.role == "upstream":
        asyncio.run(serve_upstream(args.port))
        return 0
    result = asyncio.run(run_client(args))
    out = {
        "seconds": args.seconds,
        "ok": result.ok,
        "latencies": result.latencies,
        "ttfts": result.ttfts,
        "errors": len(result.errors),
        "first_errors": result.errors[:3],
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
