"""`GET /metrics`: Prometheus counters, histograms and engine gauges that follow the traffic."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Server


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_requests_and_tokens(server: Server) -> None:
    before = scrape(server)
    client = server.client()
    usage = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=6
    ).usage
    assert usage is not None
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=6, stream=True
    )
    for _ in stream:
        pass
    httpx.post(f"{server.v1}/chat/completions", json={"model": "nope", "messages": []}, timeout=10)
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("pipeserve_requests_total", model=MODEL, status="200") == 2
    assert grew("pipeserve_requests_total", model="unknown", status="400") == 1
    assert grew("pipeserve_prompt_tokens_total", model=MODEL) == 2 * usage.prompt_tokens
    assert grew("pipeserve_completion_tokens_total", model=MODEL) >= usage.completion_tokens
    assert grew("pipeserve_prompt_cached_tokens_total", model=MODEL) >= usage.prompt_tokens - 1  # the repeat
    assert grew("pipeserve_time_to_first_token_seconds_count", model=MODEL) == 2
    assert grew("pipeserve_inter_token_latency_seconds_count", model=MODEL) >= 2
    assert value(after, "pipeserve_running_sequences", model=MODEL) == 0
    assert value(after, "pipeserve_queue_depth", model=MODEL) == 0
    assert 0 < value(after, "pipeserve_kv_cache_usage_ratio", model=MODEL) <= 1
    assert 0 < value(after, "pipeserve_prefix_cache_hit_ratio", model=MODEL) < 1
