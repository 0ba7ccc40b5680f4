"""ChatTemplate: GGUF chat templates rendered in a sandbox, with OpenAI roles mapped to template roles."""

from __future__ import annotations

import pytest

from pipeserve.errors import InvalidRequestError, PipeserveError
from pipeserve.params import ChatMessage
from pipeserve.templating import CHATML_TEMPLATE, ChatTemplate

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
