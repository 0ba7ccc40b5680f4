"""The console's pieces without a server: transcripts of logged payloads, the URL filter, diffs, signed cookies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeserve.console.filters import parse_filter
from pipeserve.console.sampler import Point, sparkline
from pipeserve.console.session import Signer, load_secret
from pipeserve.console.transcript import preview, transcript
from pipeserve.console.views.criteria import diff_lines
from pipeserve.console.views.login import local_path
from pipeserve.errors import InvalidRequestError


def test_tool_calls_reasoning_and_structured_output_are_parts() -> None:
    request = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "description": "Look it up", "parameters": {"type": "object"}},
            }
        ],
        "response_format": {"type": "json_object"},
    }
    response = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "reasoning_content": "It is mild.", "content": '{"temp": 18}'},
                "criteria_results": {"brief": {"status": "success", "score": 0.9}},
            }
        ]
    }
    shown = transcript(request, response)
    assert [t.role for t in shown.turns] == ["system", "user", "assistant", "tool"]
    assert [p.kind for p in shown.turns[1].parts] == ["text", "media"]
    call = shown.turns[2].parts[0]
    assert call.kind == "tool_call" and call.title == "weather · call_1"
    assert call.body == '{\n  "city": "Paris"\n}'  # arguments pretty-printed
    assert shown.turns[3].note == "answers call_1"
    answer = shown.choices[0]
    assert [p.kind for p in answer.turn.parts] == ["reasoning", "json"]
    assert answer.turn.parts[1].body == '{\n  "temp": 18\n}'
    assert answer.criteria["brief"]["score"] == 0.9
    assert shown.tools[0].title == "weather"
    assert preview(request) == "Weather?"


def test_an_anthropic_report_and_odd_payloads() -> None:
    request = {
        "system": "You help.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "look", "input": {"q": 1}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "found", "is_error": True}],
            },
        ],
    }
    response = {
        "role": "assistant",
        "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
    }
    shown = transcript(request, response)
    assert [t.role for t in shown.turns] == ["system", "user", "assistant", "user"]
    assert shown.turns[2].parts[0].kind == "tool_call"
    assert shown.turns[3].parts[0].title == "result of tu_1 (error)"
    assert [p.kind for p in shown.choices[0].turn.parts] == ["reasoning", "text"]
    assert shown.choices[0].finish_reason == "end_turn"
    # Whatever a report holds, the page still renders: unknown shapes are shown as JSON.
    odd = transcript({"messages": [5, {"content": {"a": 1}}]}, "not json")
    assert [p.kind for t in odd.turns for p in t.parts] == ["other", "other"]
    assert odd.choices == []
    assert transcript(None, None).turns == []


def test_the_url_filter() -> None:
    flt = parse_filter(
        {
            "model": ["m"],
            "status": ["200"],
            "from": ["2025-01-01"],
            "to": [""],
            "meta": ["a=1\nb = two"],
            "score": ["tone.score<0.5"],
        }
    )
    assert flt.log_filter.model == "m" and flt.log_filter.status_code == 200
    assert flt.log_filter.since == 1735689600000 and flt.log_filter.until is None
    assert dict(flt.log_filter.metadata) == {"a": "1", "b": "two"}
    assert flt.log_filter.criteria[0].name == "tone" and flt.log_filter.criteria[0].value == 0.5
    assert "to=" not in flt.query()  # empty fields stay out of the address
    assert parse_filter({"model": [" "]}).empty
    for bad in ({"status": ["ok"]}, {"meta": ["novalue"]}, {"from": ["soon"]}, {"score": ["tone.score<<1"]}):
        with pytest.raises(InvalidRequestError):
            parse_filter(bad)
    with pytest.raises(InvalidRequestError, match="criteria score"):
        flt.for_dataset(limit=None, split=None)
    dataset_filter = parse_filter({"model": ["m"], "meta": ["a=1"]}).for_dataset(limit=10, split="TEST")
    assert dataset_filter.model == "m" and dataset_filter.metadata == {"a": "1"} and dataset_filter.limit == 10


def test_the_instructions_diff() -> None:
    rows = diff_lines("one\ntwo\nthree", "one\n2\nthree\nfour")
    assert [(r.tag, r.left, r.right) for r in rows] == [
        ("equal", "one", "one"),
        ("replace", "two", "2"),
        ("equal", "three", "three"),
        ("insert", "", "four"),
    ]


def test_sessions_and_csrf_tokens_are_signed(tmp_path: Path) -> None:
    secret_file = tmp_path / "data" / "console-secret"
    secret = load_secret(secret_file)
    assert load_secret(secret_file) == secret  # kept across restarts
    signer = Signer(secret, lifetime_seconds=60)
    cookie = signer.open_session("key_abc")
    session = signer.read_session(cookie)
    assert session is not None and session.key_id == "key_abc"
    body, mac = cookie.split(".")
    assert signer.read_session(body[:-2] + "xx." + mac) is None
    assert signer.read_session(cookie + "x") is None
    assert Signer(b"another secret of at least thirty-two bytes", 60).read_session(cookie) is None
    assert Signer(secret, lifetime_seconds=-1).read_session(Signer(secret, -1).open_session("k")) is None
    nonce = signer.new_nonce()
    assert signer.check_csrf(nonce, signer.csrf_token(nonce))
    assert not signer.check_csrf(signer.new_nonce(), signer.csrf_token(nonce))
    assert not signer.check_csrf(nonce, None)
    # A CSRF token is never a session signature, though both are HMACs under one secret.
    assert signer.read_session(f"{body}.{signer.csrf_token(body)}") is None


def test_the_sparkline_scales_to_its_box() -> None:
    now = time.time()
    points = [Point(now + i, rate, 0, 0) for i, rate in enumerate([0.0, 5.0, 10.0])]
    coords = [tuple(map(float, pair.split(","))) for pair in sparkline(points).split()]
    assert coords[-1][0] == 240.0  # the newest on the right edge
    assert coords[2][1] == 2.0 and coords[0][1] == 38.0  # the top value at the top, zero at the bottom
    assert sparkline([]) == ""


def test_sign_in_returns_only_to_this_site() -> None:
    assert local_path("/?meta=team%3Dred") == "/?meta=team%3Dred"
    assert local_path("/datasets/ds_1") == "/datasets/ds_1"
    for elsewhere in ("//evil.example", "/\\evil.example", "/\t/evil.example", "https://evil.example", "", "/\u00e9"):
        assert local_path(elsewhere) == "/", elsewhere
