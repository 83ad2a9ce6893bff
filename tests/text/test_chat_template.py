"""Chat templates render byte-identically to transformers' apply_chat_template."""

from __future__ import annotations

import jinja2
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from chatforge.text.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, ChatTemplateError

CONVERSATIONS = {
    "single user turn": [{"role": "user", "content": "Hi!"}],
    "multi-turn without system": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Und von Österreich? 🇦🇹"},
    ],
    "multi-turn with system": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ],
}

# A template exercising what model templates use: tools as JSON, the date, rejecting bad input,
# loop controls, namespaces, documents, content parts, generation blocks, extra variables.
RICH_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='', turns=0) -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}{%- endif -%}
<|system|>Today is {{ strftime_now('%d %B %Y') }}. {{ ns.system }}
{%- if tools %}
Tools:
{% for tool in tools %}{{ tool | tojson(indent=2, sort_keys=True) }}
{% endfor %}
{%- set names = tools | map(attribute='function') | map(attribute='name') | list -%}
Names: {{ names | join(', ') }} / {{ tools | tojson(separators=(',', ':')) }}
{%- endif %}
{%- if documents %}
{% for doc in documents %}[{{ loop.index }}] {{ doc['title'] }}: {{ doc['text'] | trim }}
{% endfor %}
{%- endif %}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}{%- continue -%}{%- endif -%}
  {%- if message['role'] not in ['user', 'assistant', 'tool'] -%}
    {{- raise_exception('Unknown role: ' + message['role']) -}}
  {%- endif -%}
  {%- set ns.turns = ns.turns + 1 -%}
  {%- if ns.turns > max_turns | default(99) -%}{%- break -%}{%- endif %}
<|{{ message['role'] }}|>
  {%- if message['content'] is string %}{{ message['content'] }}
  {%- else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}
  {%- endif -%}
  {%- if message['tool_calls'] is defined -%}
    {%- for call in message['tool_calls'] %} CALL {{ call['function'] | tojson }}{% endfor -%}
  {%- endif -%}
  {%- if message['role'] == 'assistant' %}{% generation %}{{ eos_token }}{% endgeneration %}{% endif -%}
  {%- if not loop.last %} |{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}
<|assistant|>{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif -%}
{%- endif -%}
{{ dict(turns=ns.turns) | tojson }}"""

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Wetter für einen Ort — \"quoted\" <b>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
DOCUMENTS = [{"title": "Zürich", "text": "  Largest city of Switzerland.  "}]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def reference_render(source, messages, special_tokens, **kwargs):
    """transformers' renderer, given the inputs as apply_chat_template prepares them."""
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    rendered, _ = render_jinja_template([messages], chat_template=source, **special_tokens, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_apply_chat_template(smol, hf_smol, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    ours = ChatTemplate.for_tokenizer(smol).render(messages, add_generation_prompt=add_generation_prompt)
    assert ours == hf_smol.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = hf_smol.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    assert smol.encode(ours) == list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def render_both(messages, **kwargs):
    """(ours, transformers') renderings of RICH_TEMPLATE. Ours is rendered before and after the
    reference, so a date change between two renders cannot make the comparison flaky."""
    template = ChatTemplate(RICH_TEMPLATE, SPECIAL)
    before = template.render(messages, **kwargs)
    reference = reference_render(RICH_TEMPLATE, messages, SPECIAL, add_generation_prompt=True, **kwargs)
    after = template.render(messages, **kwargs)
    return (before if before == reference else after), reference


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_rich_template_with_tools_documents_and_kwargs_matches_transformers(name):
    ours, reference = render_both(CONVERSATIONS[name], tools=TOOLS, documents=DOCUMENTS, enable_thinking=False)
    assert ours == reference
    assert '"description": "Wetter für einen Ort — \\"quoted\\" <b>"' in ours  # tojson: no HTML or ASCII escaping


def test_rich_template_loop_controls_content_parts_and_tool_calls_match_transformers():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "42"},
        {"role": "user", "content": "cut off by max_turns"},
    ]
    ours, reference = render_both(messages, max_turns=3)
    assert ours == reference
    assert "part one, part two" in ours and "cut off" not in ours and 'CALL {"name": "f"' in ours


def test_raise_exception_is_a_typed_error_with_the_templates_message():
    messages = [{"role": "robot", "content": "beep"}]
    with pytest.raises(jinja2.TemplateError, match="Unknown role: robot"):
        reference_render(RICH_TEMPLATE, messages, SPECIAL)
    with pytest.raises(ChatTemplateError, match="^Unknown role: robot$") as info:
        ChatTemplate(RICH_TEMPLATE, SPECIAL).render(messages)
    assert info.value.kind == "raised"


def test_extra_kwargs_override_special_tokens_and_reserved_names_are_refused():
    template = ChatTemplate("{{ bos_token }}|{{ flavour }}", SPECIAL)
    assert template.render([{"role": "user", "content": "x"}], bos_token="<B>", flavour="mint") == "<B>|mint"
    with pytest.raises(ChatTemplateError) as info:
        template.render([{"role": "user", "content": "x"}], messages=[])
    assert info.value.kind == "input"


def test_reasoning_is_offered_under_the_names_templates_read():
    source = "{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }};{% endfor %}"
    messages = [{"role": "assistant", "content": "a", "reasoning": "because"}, {"role": "user", "content": "b"}]
    assert ChatTemplate(source).render(messages) == reference_render(source, messages, {}) == "because/because;/;"


def test_default_template_is_chatml_and_accepts_text_parts():
    template = ChatTemplate.default()
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
    ]
    expected = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert template.render(messages) == expected
    assert template.render(messages, add_generation_prompt=False) == expected.removesuffix("<|im_start|>assistant\n")
    assert reference_render(DEFAULT_CHAT_TEMPLATE, messages, {}, add_generation_prompt=True) == expected


def test_for_tokenizer_is_none_without_a_template(smol):
    class NoTemplate:
        special_tokens = {"eos_token": "</s>"}

        def get_chat_template(self, name=None, *, with_tools=False):
            return None

    assert ChatTemplate.for_tokenizer(NoTemplate()) is None
    assert ChatTemplate.for_tokenizer(smol).source == smol.chat_template


def test_content_parts_pass_through(smol):
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    # a template that loops over the parts (the default ChatML) renders them; one that does not, fails
    assert ChatTemplate.default().render(parts) == "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError) as info:  # SmolLM2's template concatenates strings only
        ChatTemplate.for_tokenizer(smol).render(parts)
    assert info.value.kind == "render"


def test_compilation_is_cached_per_source():
    first, second = ChatTemplate(RICH_TEMPLATE, SPECIAL), ChatTemplate(RICH_TEMPLATE, {})
    assert first._template is second._template
    assert ChatTemplate(RICH_TEMPLATE + " ")._template is not first._template


def test_bad_messages_are_input_errors():
    template = ChatTemplate.default()
    for bad in ([], "hello", [["user", "hi"]], [{"role": "user", "content": object()}]):
        with pytest.raises(ChatTemplateError) as info:
            template.render(bad)
        assert info.value.kind == "input"
