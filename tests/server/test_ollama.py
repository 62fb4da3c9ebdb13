"""Ollama's API through the official `ollama` client."""

import json
import time

import jsonschema
import ollama
import pytest

from conftest import MODEL, SMOLLM2, http

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def ol(server):
    return ollama.Client(host=server.url, timeout=300)


def test_chat_stream_matches_non_stream(ol):
    messages = [{"role": "user", "content": "Name a color."}]
    opts = {"seed": 7, "num_predict": 8, "temperature": 0.9}
    # The engine's numbers depend slightly on how much of the prompt came from the prefix cache;
    # a first identical request puts both compared ones in the same cache state.
    ol.chat(model=MODEL, messages=messages, options=opts)
    r = ol.chat(model=MODEL, messages=messages, options=opts)
    assert r.message.role == "assistant" and r.message.content
    assert r.done and r.done_reason in ("stop", "length")
    # prompt_eval_count counts what was evaluated: the prompt's cached blocks are not.
    assert r.eval_count >= 1 and 1 <= r.prompt_eval_count < 32
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0
    parts = list(ol.chat(model=MODEL, messages=messages, options=opts, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == r.message.content
    assert parts[-1].eval_count == r.eval_count and parts[-1].done_reason == r.done_reason


def test_generate_stream_matches_non_stream(ol):
    opts = {"seed": 3, "num_predict": 6}
    ol.generate(model=MODEL, prompt="The sky is", options=opts)  # same cache state for both (see above)
    r = ol.generate(model=MODEL, prompt="The sky is", options=opts)
    assert r.response and r.done
    streamed = "".join(p.response for p in ol.generate(model=MODEL, prompt="The sky is", options=opts, stream=True))
    assert streamed == r.response


def test_generate_raw_and_system(ol):
    r = ol.generate(model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"num_predict": 4, "temperature": 0})
    assert r.response
    r = ol.generate(model=MODEL, prompt="Hi", system="Answer in French.", options={"num_predict": 3, "temperature": 0})
    assert r.response


def test_json_schema_output_validates(ol):
    r = ol.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Ann, 31, as JSON."}],
        format=PERSON,
        options={"num_predict": 40, "seed": 1},
    )
    jsonschema.validate(json.loads(r.message.content), PERSON)


def test_format_json_gives_an_object(ol):
    r = ol.generate(model=MODEL, prompt="A JSON object with a key a:", format="json", options={"num_predict": 24, "seed": 2})
    assert isinstance(json.loads(r.response), dict)


def test_embed(ol):
    r = ol.embed(model=MODEL, input=["hello world", "goodbye"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576
    norm = sum(x * x for x in r.embeddings[0]) ** 0.5
    assert abs(norm - 1) < 1e-3
    assert r.embeddings[0] != r.embeddings[1]
    assert r.prompt_eval_count >= 3
    legacy = ol.embeddings(model=MODEL, prompt="hello world")
    assert max(abs(a - b) for a, b in zip(legacy.embedding, r.embeddings[0])) < 1e-4


def test_tags_show_copy_delete(ol, server):
    names = [m.model for m in ol.list().models]
    assert "smollm2:latest" in names
    m = next(m for m in ol.list().models if m.model == "smollm2:latest")
    assert m.size > 0 and len(m.digest) == 64 and m.details.family == "llama"

    s = ol.show(MODEL)
    assert s.details.quantization_level == "Q4_1"
    assert s.modelinfo["general.architecture"] == "llama"
    assert "<|im_start|>" in s.template
    assert "FROM" in s.modelfile

    ol.copy(MODEL, "smollm2-copy:v1")
    assert "smollm2-copy:v1" in [m.model for m in ol.list().models]
    r = ol.generate(model="smollm2-copy:v1", prompt="Hi", options={"num_predict": 1})
    assert r.done
    ol.delete("smollm2-copy:v1")
    assert "smollm2-copy:v1" not in [m.model for m in ol.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        ol.delete("smollm2-copy:v1")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ol.copy("no-such-model", "x")
    assert e.value.status_code == 404

    # A model created with parameters and a system prompt uses them.
    ol.create(model="smollm2-short", from_=str(SMOLLM2), parameters={"num_predict": 2, "temperature": 0}, system="Be brief.")
    r = ol.generate(model="smollm2-short", prompt="Tell me a long story.")
    assert r.eval_count <= 2
    assert "Be brief." in ol.show("smollm2-short").modelfile


def test_ps_and_keep_alive_unload(ol):
    ol.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    ps = ol.ps().models
    [loaded] = [m for m in ps if m.model == "smollm2:latest"]
    assert loaded.size > 0 and loaded.context_length == 2048 and loaded.expires_at

    # keep_alive per request: unloaded about a second after the request ends.
    ol.generate(model=MODEL, prompt="Hi", options={"num_predict": 1}, keep_alive="1s")
    deadline = time.time() + 10
    while time.time() < deadline and ol.ps().models:
        time.sleep(0.2)
    assert ol.ps().models == []

    # An empty prompt loads; with keep_alive 0 it unloads at once.
    r = ol.generate(model=MODEL, prompt="")
    assert r.done and r.done_reason == "load"
    assert [m.model for m in ol.ps().models] == ["smollm2:latest"]
    r = ol.generate(model=MODEL, prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert ol.ps().models == []


def test_version_root_and_head(server):
    status, _, body = http("GET", server.url + "/api/version")
    assert status == 200 and json.loads(body)["version"]
    status, _, body = http("GET", server.url + "/")
    assert status == 200 and body
    status, _, body = http("HEAD", server.url + "/")
    assert status == 200


def test_logprobs(ol):
    r = ol.generate(model=MODEL, prompt="Hi", logprobs=True, top_logprobs=2, options={"num_predict": 3, "seed": 1})
    assert r.logprobs and len(r.logprobs) == r.eval_count
    first = r.logprobs[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 2
