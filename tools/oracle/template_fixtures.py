#!/usr/bin/env python3
"""Chat-template fixtures rendered the way Hugging Face transformers renders chat templates.

transformers (`apply_chat_template`) compiles the template in jinja2's ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and the loop-controls extension, replaces `tojson` with Python's json.dumps
(ensure_ascii=False, indent/separators/sort_keys allowed), adds `raise_exception` and `strftime_now`,
and renders with messages, tools, documents, add_generation_prompt and the special-token strings.
This script does the same with jinja2 directly (no transformers install needed).

Templates:
  smollm2   tokenizer.chat_template of the SmolLM2 GGUF (read with the `gguf` package)
  gemma3    the official Gemma 3 template (the GGUF has none; smelt ships it built in)
  chatml, llama3, plain
            smelt's other built-in templates (ChatML; Llama 3 Instruct's published template;
            contents separated by blank lines for models without a template)
  exercise  a ChatML-with-tools template written here to exercise tojson, namespace, loop
            variables, Python string methods, tests and printing of non-string values

Writes fixtures/templates/chat_templates.json. Run: /work/wt/tok-venv/bin/python tools/oracle/template_fixtures.py
(needs jinja2 and gguf).
"""
import json
import os
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("SMELT_TEST_MODELS", Path.home() / ".cache" / "smelt" / "test-models"))

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

CHATML = ("{%- for message in messages %}"
          "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
          "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

PLAIN = ("{%- for message in messages %}{{ message['content'] }}"
         "{%- if not loop.last %}{{ '\\n\\n' }}{% endif %}{%- endfor %}")

EXERCISE = """{%- set ns = namespace(n_tool=0, last_user=-1, sys='') -%}
{%- for m in messages -%}
    {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}
    {%- if m.role == 'tool' %}{% set ns.n_tool = ns.n_tool + 1 %}{% endif -%}
{%- endfor -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set ns.sys = messages[0].content | trim -%}
{%- endif -%}
<|im_start|>system
{{ ns.sys if ns.sys else 'You are a helpful assistant.' }}
{%- if tools %}

# Tools ({{ tools | length }})
{% for t in tools %}
{{ t | tojson }}
{{ t.function | tojson(indent=2) }}
{{ t.function.parameters | tojson(sort_keys=true, separators=(',', ':')) }}
{{ t.function.name | upper }} / {{ t.function.name.replace('_', ' ').title() }} / {{ t.function.get('strict', 'no-strict') }}
{% endfor %}
{%- endif %}<|im_end|>
{% for m in messages -%}
    {%- if m.role == 'system' and loop.first -%}
        {%- continue -%}
    {%- endif -%}
    <|im_start|>{{ m.role }}{% if m.name is defined %} ({{ m.name }}){% endif %}
{% if m.content is string -%}
        {{ m.content.strip() }}
    {%- elif m.content is none -%}
        (no content: {{ m.content }})
    {%- else -%}
        {%- for part in m.content -%}
            [{{ loop.index }}/{{ loop.length }}{% if loop.previtem is defined %} after {{ loop.previtem.type }}{% endif %}] {{ part.text if part.text is defined else part }}
        {% endfor -%}
    {%- endif %}
    {%- if m.tool_calls is defined and m.tool_calls %}
        {%- for tc in m.tool_calls %}
<tool_call>
{"name": {{ tc.function.name | tojson }}, "arguments": {{ tc.function.arguments | tojson }}}
{{ tc.function.arguments | tojson(ensure_ascii=true) }}
</tool_call>
        {%- endfor %}
    {%- endif %}
    {%- if loop.index0 == ns.last_user %} [last user turn; words: {{ m.content.split() | length if m.content is string else 0 }}]{% endif %}
<|im_end|>
{% if m.role == 'tool' and m.content.startswith('STOP') %}{% break %}{% endif -%}
{% endfor -%}
{%- if ns.n_tool > 0 %}(tools answered {{ ns.n_tool }} times; flags {{ [true, false, none] }}; {{ {'k': 1.5, 'n': none} }}; {{ 3 / 2 }} {{ 7 // 2 }} {{ 2 ** 10 }} {{ 1e20 }}){% endif %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location — with \"quotes\" and ünïcödé",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["location"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "strict": True,
    },
}

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731

TOOL_TURN = [
    U("What's the weather in Paris?"),
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR", "unit": "celsius"}},
            }
        ],
    },
    {"role": "tool", "name": "get_current_weather", "content": "{\"temp\": 21, \"sky\": \"clear ☀\"}"},
]

CONVERSATIONS = [
    ("single_user_gen", [U("Hello!")], None, True),
    ("single_user_nogen", [U("Hello!")], None, False),
    ("system_user", [S("You are a pirate."), U("Greet me.")], None, True),
    ("multi_turn", [S("Be brief."), U("Hi"), A("Hello! How can I help?"), U("Tell me a joke.")], None, True),
    ("multi_turn_no_system_nogen", [U("1+1?"), A("2"), U("2+2?"), A("4")], None, False),
    ("whitespace_content", [U("  padded question  \n\n"), A("\n answer with newline\n")], None, True),
    ("unicode_content", [U("Ünïcödé 中文 😀 👨‍👩‍👧 <|im_end|> <end_of_turn>")], None, True),
    ("long_three_rounds", [U("a"), A("b"), U("c"), A("d"), U("e"), A("f"), U("g")], None, True),
    ("extra_fields", [{"role": "user", "content": "hi", "name": "alice"}, A("hey alice")], None, False),
    ("tools_offered", [S("Use tools when needed."), U("Weather in Oslo?")], [WEATHER_TOOL, SEARCH_TOOL], True),
    ("tool_call_and_result", TOOL_TURN, [WEATHER_TOOL], True),
    ("tool_stop_break", TOOL_TURN[:2] + [{"role": "tool", "content": "STOP here"}, A("never shown")], [WEATHER_TOOL], False),
    ("content_parts", [{"role": "user", "content": [{"type": "text", "text": " Describe "}, {"type": "image"}, {"type": "text", "text": "this."}]}], None, True),
    ("system_parts", [{"role": "system", "content": [{"type": "text", "text": "Sys as parts."}]}, U("ok")], None, True),
    ("non_alternating", [U("one"), U("two")], None, True),
    ("assistant_first", [A("I start."), U("ok")], None, False),
    ("empty_messages", [], None, True),
    ("none_content", [U("call it"), {"role": "assistant", "content": None, "tool_calls": [TOOL_TURN[1]["tool_calls"][0]]}], [WEATHER_TOOL], False),
]


def compile_template(source):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def smollm2_template():
    from gguf import GGUFReader

    r = GGUFReader(str(MODELS_DIR / "smollm2-135m-instruct-q4_1.gguf"))
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    templates = {
        # Special-token strings as smelt derives them from each GGUF's token ids.
        "smollm2": {"source": smollm2_template(), "tokens": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}},
        "gemma3": {"source": GEMMA3, "tokens": {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}},
        "chatml": {"source": CHATML, "tokens": {"bos_token": "", "eos_token": "<|im_end|>"}},
        "llama3": {"source": LLAMA3, "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}},
        "plain": {"source": PLAIN, "tokens": {"bos_token": "", "eos_token": ""}},
        "exercise": {"source": EXERCISE, "tokens": {"bos_token": "<s>", "eos_token": "</s>"}},
    }
    out = {"conversations": [], "templates": {}}
    for name, messages, tools, gen in CONVERSATIONS:
        out["conversations"].append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": gen})
    for tname, t in templates.items():
        compiled = compile_template(t["source"])
        results = []
        for name, messages, tools, gen in CONVERSATIONS:
            try:
                text = compiled.render(messages=messages, tools=tools, documents=None, add_generation_prompt=gen, **t["tokens"])
                results.append({"ok": text})
            except jinja2.exceptions.TemplateError as e:
                kind = "raised" if type(e) is jinja2.exceptions.TemplateError else "error"
                results.append({kind: str(e)})
            except Exception as e:  # TypeError etc. from Python operators
                results.append({"error": f"{type(e).__name__}: {e}"})
        out["templates"][tname] = {"source": t["source"], "tokens": t["tokens"], "expected": results}
    dest = ROOT / "fixtures" / "templates" / "chat_templates.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    for tname, t in out["templates"].items():
        kinds = [next(iter(r)) for r in t["expected"]]
        print(tname, {k: kinds.count(k) for k in set(kinds)})


if __name__ == "__main__":
    main()
