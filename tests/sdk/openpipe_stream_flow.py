"""Runs inside the `openpipe` 5.0.0 SDK's virtualenv: streams through the SDK's OpenAI wrapper, which merges
every chunk onto the first (`openpipe.merge_openai_chunks`) to report the completion.

Usage: python openpipe_stream_flow.py BASE_URL RUN MODEL. Prints one JSON object: per case, the first chunk's
delta, what the wrapper's merge assembled (merged again here, as the wrapper does), and any error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from openpipe import OpenAI
from openpipe.merge_openai_chunks import merge_openai_chunks

ADD = {
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
WEATHER = {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# The model copies text it is asked to: this makes it open its answer with call blocks.
ECHO = (
    "Reply with exactly this text and nothing else: "
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
)


def main() -> None:
    base_url, run, model = sys.argv[1:4]
    client = OpenAI(api_key="unused", base_url=base_url, openpipe={"api_key": "unused", "base_url": base_url})
    add = [{"role": "user", "content": "Add 2 and 3."}]
    cases: dict[str, dict[str, Any]] = {
        "legacy_named": {"messages": add, "functions": [ADD], "function_call": {"name": "add"}},
        "legacy_auto": {"messages": [{"role": "user", "content": ECHO}], "functions": [WEATHER]},
        "tools_required": {
            "messages": add,
            "tools": [{"type": "function", "function": ADD}, {"type": "function", "function": WEATHER}],
            "tool_choice": "required",
        },
        "tools_auto": {
            "messages": [{"role": "user", "content": ECHO}],
            "tools": [{"type": "function", "function": WEATHER}],
        },
        "text": {"messages": [{"role": "user", "content": "Say hello"}]},
    }
    out: dict[str, Any] = {}
    for name, body in cases.items():
        result: dict[str, Any] = {}
        try:
            stream = client.chat.completions.create(
                model=model,
                max_tokens=80,
                temperature=0,
                stream=True,
                metadata={"run": run, "case": name},
                **body,
            )
            chunks = list(stream)  # the wrapper merges each chunk as it passes
            result["first"] = chunks[0].choices[0].delta.model_dump(exclude_none=True)
            merged = None
            for chunk in chunks:
                merged = merge_openai_chunks(merged, chunk)
            assert merged is not None
            result["merged"] = merged.choices[0].model_dump(exclude_none=True)
        except Exception as exc:  # reported to the test, which names the case
            result["error"] = f"{type(exc).__name__}: {exc}"
        out[name] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()
