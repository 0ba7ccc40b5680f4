"""No request body, however odd, makes the server answer 500: every field gets arbitrary JSON values."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL, Server

FIELDS = [
    "messages", "model", "audio", "function_call", "functions", "tool_choice", "tools", "n", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "stop",
    "response_format", "logprobs", "top_logprobs", "stream_options", "store", "metadata", "stream", "seed",
    "logit_bias", "user", "service_tier", "modalities", "unknown_field",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=20),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])},
        optional={"content": json_values, "name": json_values, "tool_call_id": json_values},
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
    chat=messages,
    raw_stream=st.booleans(),
)
def test_no_body_gives_a_500(server: Server, changes: dict[str, Any], chat: list[Any], raw_stream: bool) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": chat or [{"role": "user", "content": "Hi"}], **changes}
    # keep generation short whatever else is drawn, so the run stays quick
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > 4:
            body[key] = 4
    body.setdefault("max_completion_tokens", 4)
    if raw_stream:
        body["stream"] = True
    response = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")
