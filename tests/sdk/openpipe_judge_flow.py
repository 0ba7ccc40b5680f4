"""Runs inside the `openpipe` 5.0.0 SDK's virtualenv: `get_criterion_judgement` against pipeserve.

Usage: python openpipe_judge_flow.py BASE_URL CRITERION. Prints what the SDK returned as one JSON object.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from openpipe import OpenAI, OpenPipe
from openpipe.api_client.core.api_error import ApiError


def main() -> None:
    base_url, criterion = sys.argv[1:3]
    op = OpenPipe(api_key="unused", base_url=base_url)
    out: dict[str, Any] = {}
    messages = [{"role": "user", "content": "count to 3"}]
    result = op.get_criterion_judgement(
        criterion_id=criterion, input={"messages": messages}, output={"role": "assistant", "content": "1, 2, 3"}
    )
    out["judgement"] = {
        "score": result.score,
        "score_type": type(result.score).__name__,
        "explanation": result.explanation,
        "total_tokens": result.usage.total_tokens if result.usage is not None else None,
    }
    calls = op.get_criterion_judgement(
        criterion_id=f"{criterion}@v1",
        input={
            "messages": messages,
            "tools": [{"type": "function", "function": {"name": "count", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
        },
        output={
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "count", "arguments": "{}"}}],
        },
    )
    out["with_tools"] = calls.score
    try:
        op.get_criterion_judgement(
            criterion_id=f"{criterion}-missing",
            input={"messages": messages},
            output={"role": "assistant", "content": "x"},
        )
        out["missing"] = None
    except ApiError as error:
        out["missing"] = {"status": error.status_code, "body": error.body}
    # op-criteria as the SDK sends it (openpipe={"criteria": [...]}) on a chat completion, Best-of-N with n=2
    client = OpenAI(api_key="unused", base_url=base_url, openpipe={"api_key": "unused", "base_url": base_url})
    completion = client.chat.completions.create(
        model="openpipe:smollm2-135m-instruct",
        messages=messages,
        max_tokens=6,
        n=2,
        temperature=1.0,
        openpipe={"criteria": [criterion]},
    )
    out["chat"] = {
        "choices": [
            {"index": choice.index, "criteria_results": getattr(choice, "criteria_results", None)}
            for choice in completion.choices
        ],
        "usage_criteria": getattr(completion.usage, "criteria", None),
    }
    print(json.dumps(out, default=lambda value: value.model_dump() if hasattr(value, "model_dump") else str(value)))


if __name__ == "__main__":
    main()
