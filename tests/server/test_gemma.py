"""The second real model: Gemma 3 270M (SentencePiece vocabulary of 262k tokens, no chat template
in the file, so the built-in Gemma template), through the same APIs."""

import json

import jsonschema
import ollama
import openai
import pytest

from conftest import GEMMA3

CAT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "legs": {"type": "integer"}},
    "required": ["name", "legs"],
}


@pytest.fixture(scope="module")
def gemma(server):
    server.create("gemma3", GEMMA3)
    yield "gemma3"
    ollama.Client(host=server.url).generate(model="gemma3", prompt="", keep_alive=0)


def test_chat_and_schema(server, gemma):
    ol = ollama.Client(host=server.url, timeout=300)
    r = ol.chat(model=gemma, messages=[{"role": "user", "content": "Name a color."}], options={"num_predict": 6, "seed": 1})
    assert r.message.content and r.eval_count >= 1
    r = ol.chat(model=gemma, messages=[{"role": "user", "content": "Describe a cat as JSON."}], format=CAT, options={"num_predict": 30, "seed": 1})
    jsonschema.validate(json.loads(r.message.content), CAT)


def test_forced_tool_call(server, gemma):
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = oa.chat.completions.create(model=gemma, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=tools, tool_choice="required", max_tokens=30, seed=1)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
