"""OpenAI's API through the official `openai` client."""

import json

import jsonschema
import openai
import pytest

from conftest import MODEL

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_chat_stream_matches_non_stream(oa):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, seed=11, temperature=0.8)
    r = oa.chat.completions.create(**kw)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(oa.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [c.finish_reason]
    # The usage chunk comes last, with no choices.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_max_completion_tokens_and_stop(oa):
    r = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_completion_tokens=3, seed=1)
    assert r.usage.completion_tokens <= 3
    r = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write 1, 2, 3, 4, 5"}], max_tokens=20, temperature=0, stop=[","]
    )
    assert "," not in r.choices[0].message.content


def test_json_schema_response_format(oa):
    r = oa.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Where is the Eiffel Tower? Answer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": CITY, "strict": True}},
        max_tokens=50,
        seed=5,
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), CITY)
    r = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "JSON please."}], response_format={"type": "json_object"}, max_tokens=20, seed=5
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions(oa):
    r = oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, seed=2)
    assert r.object == "text_completion" and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, seed=2, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_logprobs(oa):
    r = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, seed=1, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)


def test_embeddings(oa):
    r = oa.embeddings.create(model=MODEL, input=["hello", "world"])  # the client asks for base64
    assert len(r.data) == 2 and len(r.data[0].embedding) == 576
    f = oa.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(f.data[0].embedding, r.data[0].embedding)) < 1e-6
    d = oa.embeddings.create(model=MODEL, input="hello", encoding_format="float", dimensions=64)
    assert len(d.data[0].embedding) == 64
    assert r.usage.prompt_tokens >= 2


def test_models(oa):
    ids = [m.id for m in oa.models.list()]
    assert "smollm2:latest" in ids
    assert oa.models.retrieve("smollm2:latest").id == "smollm2:latest"


def test_errors_in_openai_shape(oa):
    with pytest.raises(openai.NotFoundError) as e:
        oa.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "no-such-model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], tool_choice="required")
