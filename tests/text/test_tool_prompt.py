"""Tools in the prompt (text/tool_prompt.py): the SmolLM2 adapter, a template that reads `tools`
(the transformers way), and the history errors that name their field."""

from __future__ import annotations

import pytest

from chatforge.text.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from chatforge.text.tool_format import HERMES, SMOLLM2, FunctionTool, ToolChoice, ToolSpecError
from chatforge.text.tool_prompt import ToolSupport, prepare_tool_prompt, template_tool_support

WEATHER = FunctionTool(
    "get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "Current weather"
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}}
HISTORY = [
    {"role": "user", "content": "Weather in Bern and Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2",
                                                                  "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 25}'},
]

# A template in the style of Qwen2.5's (Hermes tool format): it reads `tools`, renders past
# tool_calls from their arguments dict, and knows the `tool` role.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls is defined %}<|im_start|>assistant"
    "{% for tc in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n'
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def smol_template(smol) -> ChatTemplate:
    return ChatTemplate.for_tokenizer(smol)


def render(template: ChatTemplate, prompt) -> str:
    return template.render(prompt.messages, tools=prompt.tools)


def test_what_templates_do_with_tools_is_read_from_their_syntax(smol_template):
    assert template_tool_support(smol_template) == ToolSupport(False, False, False)
    assert template_tool_support(ChatTemplate(DEFAULT_CHAT_TEMPLATE)) == ToolSupport(False, False, False)
    assert template_tool_support(ChatTemplate(HERMES_TEMPLATE)) == ToolSupport(True, True, True)


def test_smollm2_gets_its_own_format_through_the_adapter(smol_template):
    prompt = prepare_tool_prompt(smol_template, HISTORY, [WEATHER], ToolChoice("auto"))
    assert prompt.format is SMOLLM2 and prompt.tools is None
    text = render(smol_template, prompt)
    assert text.startswith("<|im_start|>system\nYou can call functions")
    assert '<tools>[{"name": "get_weather", "description": "Current weather", "parameters": ' in text
    assert "You are a helpful AI assistant named SmolLM" not in text  # our system turn replaces the default
    assert (
        "<|im_start|>assistant\n<tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Bern\"}}, "
        '{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call><|im_end|>\n'
    ) in text
    # Both results in one user turn, in order; no role the model was not trained on.
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
        '<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n'
    ) in text
    assert "<|im_start|>tool" not in text
    assert text.endswith("<|im_start|>assistant\n")


def test_an_existing_system_message_keeps_its_text_first(smol_template):
    messages = [{"role": "system", "content": "Be brief."}, *HISTORY[:1]]
    text = render(smol_template, prepare_tool_prompt(smol_template, messages, [WEATHER], ToolChoice("required")))
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions")


def test_tool_choice_none_tells_nothing_of_tools_yet_renders_the_history(smol_template):
    text = render(smol_template, prepare_tool_prompt(smol_template, HISTORY, [WEATHER], ToolChoice("none")))
    assert "<tools>" not in text and "You can call functions" not in text
    assert "<tool_call>[" in text and "<tool_response>" in text


def test_an_instruction_replaces_the_adapters_text(smol_template):
    prompt = prepare_tool_prompt(smol_template, HISTORY[:1], [WEATHER], ToolChoice("auto"), instruction="Use a tool if needed.")
    assert prompt.messages[0]["content"].startswith("Use a tool if needed.\n<tools>\n[{")


def test_an_unknown_model_without_tool_support_gets_the_hermes_adapter():
    chatml = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    prompt = prepare_tool_prompt(chatml, HISTORY, [WEATHER], ToolChoice("auto"))
    assert prompt.format is HERMES
    text = render(chatml, prompt)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>\n<tool_call>' in text


def test_a_template_that_reads_tools_gets_them_the_transformers_way():
    template = ChatTemplate(HERMES_TEMPLATE)
    prompt = prepare_tool_prompt(template, HISTORY, [WEATHER], ToolChoice("auto"))
    assert prompt.format is HERMES
    assert prompt.tools == [WEATHER.openai_dict()]
    assert prompt.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Bern"}  # parsed for the template
    assert prompt.messages[2] == HISTORY[2]  # the tool role is kept, with its tool_call_id
    text = render(template, prompt)
    assert text.startswith('<|im_start|>system\n<tools>{"type": "function", "function": {"name": "get_weather"')
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    none = prepare_tool_prompt(template, HISTORY, [WEATHER], ToolChoice("none"))
    assert none.tools is None


@pytest.mark.parametrize(
    "messages, param",
    [
        ([HISTORY[0], {**HISTORY[1], "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{city"}}]}],
         "messages[1].tool_calls[0].function.arguments"),
        ([HISTORY[0], {**HISTORY[1], "tool_calls": [CALL, {**CALL, "function": {"name": "f", "arguments": "[1]"}}]}],
         "messages[1].tool_calls[1].function.arguments"),
        ([HISTORY[0], HISTORY[2]], "messages[1].tool_call_id"),
        ([*HISTORY[:2], {**HISTORY[2], "tool_call_id": "call_9"}], "messages[2].tool_call_id"),
    ],
)
def test_history_errors_name_the_field(smol_template, messages, param):
    with pytest.raises(ToolSpecError) as info:
        prepare_tool_prompt(smol_template, messages, [WEATHER], ToolChoice("auto"))
    assert info.value.param == param
