"""Anthropic's Messages API through the official `anthropic` client, and Claude Code's requests."""

import json

import anthropic
import pytest

from conftest import MODEL, SMOLLM2, http


@pytest.fixture(scope="module")
def ant(server):
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


def test_messages_stream_matches_non_stream(ant):
    kw = dict(model=MODEL, max_tokens=8, extra_body={"temperature": 0}, system="Be short.", messages=[{"role": "user", "content": "Name an animal."}])
    ant.messages.create(**kw)  # the same prefix-cache state for both compared requests
    r = ant.messages.create(**kw)
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.content[0].type == "text" and r.content[0].text
    assert r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) > 5 and r.usage.output_tokens >= 1
    with ant.messages.stream(**kw) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == r.content[0].text
    assert final.stop_reason == r.stop_reason and final.usage.output_tokens == r.usage.output_tokens


def test_exact_event_sequence(server):
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, raw = http("POST", server.url + "/v1/messages", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append(data)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(e["delta"]["type"] == "text_delta" for e in events if e["type"] == "content_block_delta")
    delta = events[-2]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens") and delta["usage"]["output_tokens"] >= 1


def test_stop_sequence_is_reported(ant):
    # Greedy output of this prompt, then the same request stopped at a word inside it.
    kw = dict(model=MODEL, max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Count from one to ten in words."}])
    full = ant.messages.create(**kw).content[0].text
    assert len(full) >= 6, full
    stop = full[4:6]
    r = ant.messages.create(stop_sequences=[stop], **kw)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert stop not in r.content[0].text and full.startswith(r.content[0].text)
    with ant.messages.stream(stop_sequences=[stop], **kw) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_count_tokens(ant):
    r = ant.messages.count_tokens(model=MODEL, system=[{"type": "text", "text": "You are terse."}], messages=[{"role": "user", "content": "Hello there"}])
    assert 5 < r.input_tokens < 60


def test_claude_code_shaped_request(server):
    """What Claude Code sends: ?beta=true, system blocks with cache_control, thinking, metadata,
    context_management, output_config, tools, and max_tokens 32000 (clamped to the context)."""
    tools = [
        {"name": name, "description": name, "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}}
        for name in ["Bash", "Read"]
    ]
    body = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0"},
            {"type": "text", "text": "You are a coding assistant.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi.", "cache_control": {"type": "ephemeral"}}]}],
        "tools": tools,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "user_abc"},
        "context_management": {"edits": []},
        "output_config": {"effort": "low"},
        "temperature": 1,
        "stop_sequences": ["\n"],
    }
    status, _, raw = http("POST", server.url + "/v1/messages?beta=true", body, headers={"anthropic-beta": "claude-code-20250219", "anthropic-version": "2023-06-01"})
    assert status == 200, raw
    text = raw.decode()
    assert "event: message_stop" in text and "event: error" not in text


def test_max_tokens_beyond_context_is_clamped(ant, server):
    server.create("smollm2-tiny", SMOLLM2, parameters={"num_ctx": 64})
    r = ant.messages.create(
        model="smollm2-tiny", max_tokens=32000, extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
    )
    assert r.stop_reason in ("max_tokens", "end_turn")
    assert r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) + r.usage.output_tokens <= 64
    if r.stop_reason == "max_tokens":
        assert r.usage.input_tokens + (r.usage.cache_read_input_tokens or 0) + r.usage.output_tokens >= 60


def test_prompt_longer_than_context_is_an_error(ant, server):
    server.create("smollm2-tiny", SMOLLM2, parameters={"num_ctx": 64})
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model="smollm2-tiny", max_tokens=5, messages=[{"role": "user", "content": "word " * 100}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "context" in e.value.body["error"]["message"]


def test_errors_in_anthropic_shape(ant):
    with pytest.raises(anthropic.NotFoundError) as e:
        ant.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model=MODEL, max_tokens=5, extra_body={"temperature": 3}, messages=[{"role": "user", "content": "x"}])
