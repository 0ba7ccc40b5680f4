"""`POST /v1/chat/completions` end to end: the real server, the embedded model, the official `openai` client."""

from __future__ import annotations

import math
import uuid

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server
from tests.greedy import assert_same_greedy_path, path

HELLO = [{"role": "user", "content": "Say hello to Ada."}]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who loves books."}]


def test_every_response_field_is_present_with_its_type(server: Server) -> None:
    body = httpx.post(
        f"{server.v1}/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 8}, timeout=60
    ).json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    message = choice["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str) and message["content"]
    for key in ("refusal", "reasoning_content", "tool_calls", "function_call"):
        assert key in message and message[key] is None
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert set(usage["prompt_tokens_details"]) == {"cached_tokens", "audio_tokens"}
    assert set(usage["completion_tokens_details"]) == {
        "reasoning_tokens",
        "audio_tokens",
        "text_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    }
    assert usage["prompt_cache_hit_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]


def test_prompt_tokens_is_the_templated_prompt_length(client: openai.OpenAI) -> None:
    from llama_cpp import Llama

    from pipeserve.engines.llamacpp.options import embedded_gguf_path

    # SmolLM2's own template, written out by hand: a default system turn, the user turn, the assistant cue.
    templated = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nSay hello to Ada.<|im_end|>\n<|im_start|>assistant\n"
    )
    vocab = Llama(str(embedded_gguf_path()), vocab_only=True, verbose=False)
    expected = len(vocab.tokenize(templated.encode(), add_bos=False, special=True))
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=30,
        max_completion_tokens=3,
        temperature=0,
    )
    assert response.usage is not None and response.usage.completion_tokens == 3
    assert response.choices[0].finish_reason == "length"


def test_n_gives_n_real_samples(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        n=4,
        max_tokens=16,
        temperature=1.0,
        seed=7,
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    contents = [c.message.content for c in response.choices]
    assert len(set(contents)) >= 3, contents
    assert response.usage is not None
    if all(c.finish_reason == "length" for c in response.choices):
        assert response.usage.completion_tokens == 4 * 16
    else:
        assert 4 <= response.usage.completion_tokens < 4 * 16


def test_same_seed_same_output_and_other_seeds_differ(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        response = client.chat.completions.create(
            model=MODEL,
            messages=STORY,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=1.0,
            seed=seed,
        )
        return response.choices[0].message.content or ""

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2)}) >= 2


def test_stop_string_is_never_emitted(client: openai.OpenAI) -> None:
    watch = {"logprobs": True, "top_logprobs": 3}
    free = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=40, temperature=0, **watch)  # type: ignore[arg-type]
    text = free.choices[0].message.content or ""
    words = text.split()
    assert len(words) > 6, text
    stop = " " + words[5]
    expected = text[: text.index(stop)]
    stopped = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        stop=[stop, "ZZZ-never"],
        **watch,  # type: ignore[arg-type]
    )
    content = stopped.choices[0].message.content or ""
    assert stop not in content
    shared = assert_same_greedy_path(path(stopped.choices[0]), path(free.choices[0]))
    if len("".join(entry["token"] for entry in path(free.choices[0])[:shared])) >= len(expected) + len(stop):
        # the same greedy text through the stop string (unless rounding parted them before it, at a near-tie)
        assert content == expected
        assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage is not None and stopped.usage.completion_tokens < 40

    stream = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
        stop=stop,
        stream=True,
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_logprobs_are_real_model_logprobs(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 5
        # greedy decoding picks the most likely token, so it heads its own alternatives
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
        ordered = [t.logprob for t in entry.top_logprobs]
        assert ordered == sorted(ordered, reverse=True)
        assert sum(math.exp(lp) for lp in ordered) <= 1.0 + 1e-6


def test_logprobs_without_alternatives(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, logprobs=True)  # type: ignore[arg-type]
    entries = response.choices[0].logprobs.content  # type: ignore[union-attr]
    assert entries and all(e.top_logprobs == [] for e in entries)


def test_stream_matches_the_plain_response(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["length"]
    assert plain.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens


def test_stream_with_n_and_logprobs(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=6,
        n=2,
        seed=3,
        stream=True,
        logprobs=True,
        top_logprobs=2,
    )
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.content:
                assert choice.logprobs is not None and choice.logprobs.content
                assert all(len(e.top_logprobs) == 2 for e in choice.logprobs.content)
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts[0] and texts[1]


def test_penalties_change_the_output(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write the word cat twenty times."}]

    def run(**penalty: float) -> str:
        response = client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=30,
            temperature=0,
            **penalty,  # type: ignore[arg-type]
        )
        return response.choices[0].message.content or ""

    plain = run()
    assert run(frequency_penalty=2.0) != plain
    assert run(presence_penalty=2.0) != plain


def test_logit_bias_acts(client: openai.OpenAI) -> None:
    from llama_cpp import Llama

    from pipeserve.engines.llamacpp.options import embedded_gguf_path

    vocab = Llama(str(embedded_gguf_path()), vocab_only=True, verbose=False)
    [token] = vocab.tokenize(b" banana", add_bos=False)
    response = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=4,
        logit_bias={str(token): 100},
    )
    assert response.choices[0].message.content == " banana" * 4


def test_top_p_zero_is_greedy(client: openai.OpenAI) -> None:
    watch = {"logprobs": True, "top_logprobs": 3}
    greedy = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, temperature=0, **watch)  # type: ignore[arg-type]
    nucleus = client.chat.completions.create(
        model=MODEL,
        messages=STORY,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=1.5,
        top_p=0.0,
        **watch,  # type: ignore[arg-type]
    )
    # Sampling at temperature 1.5 would leave the greedy path at once; only rounding may part them, at a near-tie.
    assert assert_same_greedy_path(path(nucleus.choices[0]), path(greedy.choices[0])) >= 1


def test_all_roles_names_and_text_parts(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse.", "name": "rules"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}], "name": "ada"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":2}'}}
            ],
        },
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "function", "name": "add", "content": "4"},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    assert response.choices[0].message.content


def test_text_parts_equal_string_content(client: openai.OpenAI) -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello to Ada."}]}]
    watch = {"logprobs": True, "top_logprobs": 3}
    a = client.chat.completions.create(model=MODEL, messages=as_parts, max_tokens=8, temperature=0, **watch)  # type: ignore[arg-type]
    b = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0, **watch)  # type: ignore[arg-type]
    assert_same_greedy_path(path(a.choices[0]), path(b.choices[0]))
    assert a.usage is not None and b.usage is not None and a.usage.prompt_tokens == b.usage.prompt_tokens


def test_metadata_and_store_are_accepted(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=2,
        store=True,
        metadata={"experiment": "a", "user": "42"},
    )
    assert response.choices[0].message.content is not None


def test_openpipe_base_path_and_alias(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/api/v1", api_key="x", max_retries=0)
    response = client.chat.completions.create(
        model="openpipe:smollm2-135m-instruct",
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert response.model == "openpipe:smollm2-135m-instruct"
    assert response.choices[0].message.content


def test_explicit_nulls_mean_defaults(server: Server) -> None:
    nullable = [
        "audio",
        "function_call",
        "functions",
        "tool_choice",
        "tools",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "stop",
        "response_format",
        "logprobs",
        "top_logprobs",
        "stream_options",
        "store",
        "metadata",
        "stream",
        "seed",
        "logit_bias",
        "user",
    ]
    body = {"model": MODEL, "messages": HELLO, **dict.fromkeys(nullable)}
    body["max_tokens"] = 3
    response = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1


def test_repeated_prefix_is_reported_as_cache_hits(client: openai.OpenAI) -> None:
    words = " ".join(uuid.uuid4().hex[:6] for _ in range(80))
    system = {"role": "system", "content": f"You are the archivist of the following catalogue: {words}"}

    def ask(question: str) -> openai.types.CompletionUsage:
        response = client.chat.completions.create(
            model=MODEL,
            messages=[system, {"role": "user", "content": question}],  # type: ignore[list-item]
            max_tokens=2,
        )
        assert response.usage is not None
        return response.usage

    first = ask("What is the first entry?")
    second = ask("How many entries are there?")
    assert first.prompt_tokens > 250
    assert first.prompt_tokens_details is not None and first.prompt_tokens_details.cached_tokens < 10
    assert second.prompt_tokens_details is not None
    shared = second.prompt_tokens_details.cached_tokens
    assert shared > 250
    extra = second.model_extra or {}
    assert extra["prompt_cache_hit_tokens"] == shared
    assert extra["prompt_cache_miss_tokens"] == second.prompt_tokens - shared


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_models_endpoints(server: Server, prefix: str) -> None:
    client = openai.OpenAI(base_url=server.url + prefix, api_key="x", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]
    model = client.models.retrieve("openpipe:smollm2-135m-instruct")
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_health(server: Server) -> None:
    health = server.health()
    assert health["status"] == "ok"
    [model] = health["models"]
    assert model["id"] == MODEL and model["kv_cells_total"] > 0
