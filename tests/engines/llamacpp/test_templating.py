"""ChatTemplate: GGUF chat templates rendered in a sandbox, with OpenAI roles mapped to template roles."""

from __future__ import annotations

import json

import pytest

from pipeserve.engines.llamacpp.templating import CHATML_TEMPLATE, ChatTemplate
from pipeserve.engines.llamacpp.toolcalls import tools_prompt
from pipeserve.errors import InvalidRequestError, PipeserveError
from pipeserve.params import ChatMessage, ToolCall, ToolSpec

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_smollm2_template_adds_its_system_prompt() -> None:
    text = ChatTemplate(SMOLLM2).render([ChatMessage("user", "Hi")])
    assert text == DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_template_with_a_system_message_and_a_conversation() -> None:
    text = ChatTemplate(SMOLLM2).render(
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!")]
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_developer_becomes_system_and_function_becomes_tool() -> None:
    text = ChatTemplate(SMOLLM2).render(
        [ChatMessage("developer", "Be brief."), ChatMessage("function", "42", name="answer")]
    )
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n")


def test_template_sees_names_tool_call_ids_and_special_tokens() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}|{{ m.get('name', '-') }}|"
        "{{ m.get('tool_call_id', '-') }};{% endfor %}{{ eos_token }}"
    )
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    text = template.render([ChatMessage("user", "a", name="bob"), ChatMessage("tool", "b", tool_call_id="c1")])
    assert text == "<s>user|bob|-;tool|-|c1;</s>"


def test_raise_exception_becomes_a_400_on_messages() -> None:
    source = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    )
    template = ChatTemplate(source)
    assert template.render([ChatMessage("user", "Hi")]) == ""
    with pytest.raises(InvalidRequestError) as info:
        template.render([ChatMessage("assistant", "Hi")])
    error: PipeserveError = info.value
    assert error.status_code == 400
    assert error.param == "messages"
    assert "Conversation must start with user" in error.message


def test_template_that_does_not_compile() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for message in messages %}{{ message['content'] }}")


def test_sandbox_refuses_unsafe_access() -> None:
    template = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(InvalidRequestError):
        template.render([ChatMessage("user", "Hi")])


def test_chatml_fallback() -> None:
    text = ChatTemplate(CHATML_TEMPLATE).render([ChatMessage("system", "S"), ChatMessage("user", "Hi")])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------------------
# Tools: the generic format for templates that do not know them, the template's own format for those that do
# ---------------------------------------------------------------------------------------------------------

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ADD = ToolSpec(
    name="add",
    description=None,
    parameters={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)
NATIVE = (
    "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }}"
    "{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}({{ m.tool_calls[0].function.arguments.a }})"
    "{% endif %};{% endfor %}"
)


def test_smollm2_template_is_not_native_for_tools() -> None:
    assert not ChatTemplate(SMOLLM2).native_tools
    assert ChatTemplate(NATIVE).native_tools


def test_generic_tools_prompt_is_merged_into_the_first_system_message() -> None:
    text = ChatTemplate(SMOLLM2).render([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")], [WEATHER, ADD])
    prompt = tools_prompt((WEATHER, ADD))
    assert text == (
        f"<|im_start|>system\nBe brief.\n\n{prompt}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.count("<|im_start|>system") == 1
    assert "get_weather" in text and "Current weather in a city" in text and "<tool_call>" in text


def test_generic_tools_prompt_is_merged_into_a_developer_message() -> None:
    text = ChatTemplate(SMOLLM2).render([ChatMessage("developer", "Be brief."), ChatMessage("user", "Hi")], [ADD])
    assert text.startswith(f"<|im_start|>system\nBe brief.\n\n{tools_prompt((ADD,))}<|im_end|>\n")
    assert text.count("<|im_start|>system") == 1


def test_generic_tools_prompt_becomes_a_system_message_when_there_is_none() -> None:
    text = ChatTemplate(SMOLLM2).render([ChatMessage("user", "Hi")], [WEATHER])
    assert text == (
        f"<|im_start|>system\n{tools_prompt((WEATHER,))}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "SmolLM" not in text  # the template's default system prompt gives way to the tools


def test_without_tools_there_is_no_tools_prompt() -> None:
    text = ChatTemplate(SMOLLM2).render([ChatMessage("system", "S"), ChatMessage("user", "Hi")], [])
    assert "<tool_call>" not in text and "<tools>" not in text


def test_generic_assistant_tool_calls_render_as_blocks() -> None:
    messages = [
        ChatMessage("system", "S"),
        ChatMessage("user", "Weather in Paris and 1+2?"),
        ChatMessage(
            "assistant",
            "",
            tool_calls=(
                ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="call_2", name="add", arguments='{"a":1,"b":2}'),
            ),
        ),
        ChatMessage("tool", "Sunny", tool_call_id="call_1"),
        ChatMessage("tool", "3", tool_call_id="call_2"),
        ChatMessage("assistant", "Checking again.", tool_calls=(ToolCall("call_3", "add", '{"a": 2, "b": 2}'),)),
    ]
    text = ChatTemplate(SMOLLM2).render(messages)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and 1+2?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\nSunny<|im_end|>\n"
        "<|im_start|>tool\n3<|im_end|>\n"
        '<|im_start|>assistant\nChecking again.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}'
        "</tool_call><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_native_template_gets_the_tools() -> None:
    text = ChatTemplate(NATIVE).render([ChatMessage("user", "Hi")], [WEATHER, ADD])
    assert text == "[get_weather][add]user:Hi;"


def test_native_template_gets_the_tool_definitions_in_openai_form() -> None:
    source = "{{ tools | tojson }}"
    assert "tools" in source
    text = ChatTemplate(source).render([ChatMessage("user", "Hi")], [WEATHER, ADD])
    assert json.loads(text) == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        },
        {"type": "function", "function": {"name": "add", "description": "", "parameters": ADD.parameters}},
    ]


def test_native_template_gets_tool_calls_with_parsed_arguments() -> None:
    messages = [
        ChatMessage("user", "1+2?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall(id="call_1", name="add", arguments='{"a": 1, "b": 2}'),)),
        ChatMessage("tool", "3", tool_call_id="call_1"),
    ]
    text = ChatTemplate(NATIVE).render(messages, [ADD])
    # The content is left alone: the template renders the call itself, no generic block and no tools prompt.
    assert text == "[add]user:1+2?;assistant:add(1);tool:3;"


def test_native_template_sees_the_whole_tool_call() -> None:
    source = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.id }}|{{ c.type }}|{{ c.function.name }}|"
        "{{ c.function.arguments | tojson }};{% endfor %}{% endfor %}{{ tools is defined }}"
    )
    calls = (ToolCall("call_1", "add", '{"a": 1, "b": 2}'), ToolCall("call_2", "get_weather", "{not json"))
    text = ChatTemplate(source).render([ChatMessage("assistant", "", tool_calls=calls)])
    assert text == 'call_1|function|add|{"a": 1, "b": 2};call_2|function|get_weather|"{not json";False'
