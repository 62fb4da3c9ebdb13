"""Tool-call round trips in all three APIs with the official clients.

Every test starts from the same tools and the same first message, so after the first request the
long tool prompt comes from the prefix cache. SmolLM2-135M does not call tools by itself: the
calls are forced (tool_choice required / any / named), which constrained decoding turns into a
valid call to a declared tool with arguments matching its schema.
"""

import json

import anthropic
import jsonschema
import ollama
import openai
import pytest

from conftest import MODEL

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TIME_SCHEMA = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME_SCHEMA}},
]
ANTHROPIC_TOOLS = [
    {"name": t["function"]["name"], "description": t["function"]["description"], "input_schema": t["function"]["parameters"]}
    for t in OPENAI_TOOLS
]
QUESTION = "What is the weather in Paris?"
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}


def check_call(name, args):
    assert name in SCHEMAS, name
    jsonschema.validate(args, SCHEMAS[name])


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def ant(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def ol(server):
    return ollama.Client(host=server.url, timeout=300)


def test_openai_required_round_trip(oa):
    messages = [{"role": "user", "content": QUESTION}]
    r = oa.chat.completions.create(model=MODEL, messages=messages, tools=OPENAI_TOOLS, tool_choice="required", max_tokens=40, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content in (None, "")
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    args = json.loads(call.function.arguments)
    check_call(call.function.name, args)

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"})
    r2 = oa.chat.completions.create(model=MODEL, messages=messages, tools=OPENAI_TOOLS, max_tokens=6, seed=1)
    # The model answers, or calls a tool again: either way nothing of the call syntax leaks.
    m2 = r2.choices[0].message
    if m2.tool_calls:
        assert r2.choices[0].finish_reason == "tool_calls"
        for c in m2.tool_calls:
            check_call(c.function.name, json.loads(c.function.arguments))
    else:
        assert m2.content and "<tool_call>" not in m2.content
        assert r2.choices[0].finish_reason in ("stop", "length")


def test_openai_named_choice_streamed(oa):
    stream = oa.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=40,
        seed=1,
        stream=True,
    )
    calls, finish, content = {}, None, ""
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                content += c.delta.content
            for tc in c.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
                slot["id"] = slot["id"] or tc.id
                if tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_time" and calls[0]["id"]
    check_call("get_time", json.loads(calls[0]["arguments"]))
    assert "<tool_call>" not in content


def test_anthropic_any_round_trip(ant):
    messages = [{"role": "user", "content": QUESTION}]
    r = ant.messages.create(model=MODEL, max_tokens=40, extra_body={"temperature": 0}, messages=messages, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"})
    assert r.stop_reason == "tool_use"
    uses = [b for b in r.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].id.startswith("toolu_")
    check_call(uses[0].name, uses[0].input)

    messages.append({"role": "assistant", "content": [b.model_dump() for b in r.content]})
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees and sunny"}]})
    r2 = ant.messages.create(model=MODEL, max_tokens=6, extra_body={"temperature": 0}, messages=messages, tools=ANTHROPIC_TOOLS)
    text = "".join(b.text for b in r2.content if b.type == "text")
    assert "<tool_call>" not in text
    if r2.stop_reason == "tool_use":
        for b in r2.content:
            if b.type == "tool_use":
                check_call(b.name, b.input)
    else:
        assert r2.stop_reason in ("end_turn", "max_tokens") and text


def test_anthropic_named_tool_streamed(ant):
    events = []
    with ant.messages.stream(
        model=MODEL, max_tokens=40, extra_body={"temperature": 0}, messages=[{"role": "user", "content": QUESTION}], tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "get_weather"}
    ) as stream:
        for ev in stream:
            events.append(ev)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert "input_json" in kinds  # the SDK's event for input_json_delta
    assert kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    check_call("get_weather", use.input)


def test_ollama_round_trip(ol):
    messages = [{"role": "user", "content": QUESTION}]
    # Ollama's API has no tool_choice; smelt reads one from options (the client passes them through).
    r = ol.chat(model=MODEL, messages=messages, tools=OPENAI_TOOLS, options={"tool_choice": "required", "num_predict": 40, "seed": 1})
    calls = r.message.tool_calls
    assert calls and len(calls) == 1
    check_call(calls[0].function.name, dict(calls[0].function.arguments))
    assert not r.message.content

    messages.append(r.message)
    messages.append({"role": "tool", "content": "18 degrees and sunny", "tool_name": calls[0].function.name})
    r2 = ol.chat(model=MODEL, messages=messages, tools=OPENAI_TOOLS, options={"num_predict": 6, "seed": 1})
    assert "<tool_call>" not in (r2.message.content or "")
    if r2.message.tool_calls:
        for c in r2.message.tool_calls:
            check_call(c.function.name, dict(c.function.arguments))
    else:
        assert r2.message.content


def test_ollama_streamed_call(ol):
    parts = list(
        ol.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=OPENAI_TOOLS, stream=True,
                options={"tool_choice": {"type": "function", "function": {"name": "get_time"}}, "num_predict": 40, "seed": 1})
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_time"]
    check_call("get_time", dict(calls[0].function.arguments))
    assert parts[-1].done


def test_openai_tool_choice_none_answers_in_text(oa):
    # Last: without tools the prompt differs, so it would push the shared tool prompt out of the cache.
    r = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=OPENAI_TOOLS, tool_choice="none", max_tokens=6, seed=1
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content
