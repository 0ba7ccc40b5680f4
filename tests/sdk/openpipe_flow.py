"""Runs inside a virtualenv holding only the `openpipe` 5.0.0 SDK (which caps openai at 1.97.1).

Usage: python openpipe_flow.py BASE_URL RUN MODEL. Drives pipeserve through the SDK exactly as a user would,
changing nothing but the base URL, and prints what it saw as one JSON object for the test to check.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from openpipe import OpenAI, OpenPipe


def main() -> None:
    base_url, run, model = sys.argv[1:4]
    alias = "openpipe:smollm2-135m-instruct"
    out: dict[str, Any] = {}
    client = OpenAI(api_key="unused", base_url=base_url, openpipe={"api_key": "unused", "base_url": base_url})
    op = OpenPipe(api_key="unused", base_url=base_url)
    hello = [{"role": "user", "content": "Say hello"}]

    # An `openpipe:` model goes to the OpenPipe endpoint with op-* headers: logged by the server itself.
    completion = client.chat.completions.create(
        model=alias,
        messages=hello,
        max_tokens=5,
        metadata={"run": run, "kind": "direct"},
        openpipe={"tags": {"run": run, "prompt_id": "greeting"}},
    )
    out["direct_id"] = completion.id
    out["direct_content"] = completion.choices[0].message.content
    latest = op.base_client.local_testing_only_get_latest_logged_call()
    out["latest"] = None if latest is None else json.loads(latest.json(by_alias=True))

    # Any other model is called through the plain OpenAI client, then reported with /report.
    plain = client.chat.completions.create(
        model=model, messages=hello, max_tokens=3, openpipe={"tags": {"run": run, "kind": "reported"}}
    )
    out["plain_id"] = plain.id

    updated = op.update_log_metadata(
        filters=[{"field": "metadata.run", "equals": run}, {"field": "completionId", "equals": completion.id}],
        metadata={"stage": "reviewed", "kind": None},
    )
    out["updated"] = updated.matched_logs
    tagged = op.update_log_tags(filters=[{"field": "tags.run", "equals": run}], tags={"batch": 7})
    out["tagged"] = tagged.matched_logs

    now = int(time.time() * 1000)
    reported = op.report(
        requested_at=now - 500,
        received_at=now,
        req_payload={"model": "gpt-4o", "messages": hello, "metadata": {"run": run}},
        resp_payload={
            "id": f"chatcmpl-external-{run}",
            "object": "chat.completion",
            "created": now // 1000,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        status_code=200,
        tags={"run": run, "source": "external"},
    )
    out["reported"] = reported.status

    # The response cache: written once, then read.
    cache_question = [{"role": "user", "content": f"Cache me {run}"}]
    first = client.chat.completions.create(
        model=alias, messages=cache_question, max_tokens=5, temperature=1.0, openpipe={"cache": "writeOnly"}
    )
    again = client.chat.completions.create(
        model=alias, messages=cache_question, max_tokens=5, temperature=1.0, openpipe={"cache": "readOnly"}
    )
    out["cache"] = [first.id, again.id]
    latest = op.base_client.local_testing_only_get_latest_logged_call()
    out["cache_latest_hit"] = None if latest is None else latest.cache_hit

    dataset = op.create_dataset(name=f"sdk-{run}")
    created = op.create_dataset_entries(
        dataset_id=dataset.id,
        entries=[
            {"messages": [*hello, {"role": "assistant", "content": "Hello!"}], "split": "TRAIN"},
            {
                "messages": [*hello, {"role": "assistant", "content": "Hi there."}],
                "rejected_message": {"role": "assistant", "content": "Go away."},
                "split": "TEST",
                "metadata": {"run": run},
            },
            {"messages": hello},  # no answer to learn: an error for this entry only
        ],
    )
    out["entries_created"] = created.entries_created
    out["entry_errors"] = [error.entry_index for error in created.errors.data]
    listed = op.list_datasets()
    out["listed"] = [(d.id, d.name, d.dataset_entry_count) for d in listed.data if d.id == dataset.id]
    deleted = op.delete_dataset(dataset_id=dataset.id)
    out["deleted"] = [deleted.id, deleted.deleted]
    out["listed_after"] = [d.id for d in op.list_datasets().data if d.id == dataset.id]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
