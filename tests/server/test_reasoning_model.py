"""A model configured as a reasoning model: its thinking is split out end to end (real engine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, start_server, stop_server

CONFIG = """
[[models]]
id = "thinker"
engine = "llamacpp"
reasoning = true
context_size = 4096
"""


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("thinker"), config=CONFIG)
    yield server
    stop_server(server)


def test_unclosed_thinking_is_reasoning_not_content(thinker: Server) -> None:
    # SmolLM2 never writes </think>: everything it says is (unfinished) thinking.
    client = thinker.client()
    response = client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=12
    )
    message = response.choices[0].message
    assert message.content == ""
    assert message.reasoning_content  # type: ignore[attr-defined]
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens
    stream = client.chat.completions.create(
        model="thinker",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=12,
        stream=True,
    )
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert "".join(d.content or "" for d in deltas) == ""
