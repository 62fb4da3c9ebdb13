"""Continuous batching, the paged KV pool and the prefix cache, through the HTTP APIs."""

import json
import threading

import anthropic
import ollama
import openai

from conftest import MODEL, SMOLLM2, http as request

SYSTEM = (
    "You are the assistant of a small bakery. The bakery sells bread, croissants, cakes and "
    "coffee, opens at seven in the morning and closes at six in the evening, and is closed on "
    "Mondays. Answer in one short sentence."
)


def test_a_repeated_prefix_is_served_from_the_cache(server):
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When do you open?"}]
    first = oa.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
    # The next turn of the same conversation: everything before the new turn is cached.
    msgs2 = msgs + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And on Sundays?"},
    ]
    r = oa.chat.completions.create(model=MODEL, messages=msgs2, max_tokens=4, temperature=0)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached >= 32 and cached % 32 == 0 and cached < r.usage.prompt_tokens

    an = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    m = an.messages.create(model=MODEL, max_tokens=4, system=SYSTEM, messages=[{"role": "user", "content": "When do you open?"}])
    assert m.usage.cache_read_input_tokens >= 32
    assert m.usage.input_tokens >= 1

    ol = ollama.Client(host=server.url, timeout=300)
    a = ol.chat(model=MODEL, messages=msgs, options={"num_predict": 2, "temperature": 0})
    # Ollama's prompt_eval_count is what was evaluated: the cached blocks are left out.
    assert 1 <= a.prompt_eval_count < first.usage.prompt_tokens - 31


def test_concurrent_greedy_requests_match_sequential_ones(make_server):
    # At the machine's own instruction set: kernels are chosen by a row's role, not by the batch
    # size (see crates/smelt-engine/tests/batch.rs).
    server = make_server()
    server.create("smollm2", SMOLLM2)
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    questions = ["What is two plus two?", "Name a planet.", "Say hello in French.", "What colour is grass?"]
    kw = dict(model=MODEL, max_tokens=12, temperature=0)

    def ask(q):
        return oa.chat.completions.create(messages=[{"role": "user", "content": q}], **kw).choices[0].message.content

    alone = [ask(q) for q in questions]
    together = [None] * len(questions)

    def run(i):
        together[i] = ask(questions[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    # Greedy text is the same whether a request ran alone or batched with others.
    assert together == alone


def test_ps_reports_the_kv_pool_and_num_ctx_never_reloads(server):
    ol = ollama.Client(host=server.url, timeout=300)
    ol.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    loads = server.metric("smelt_model_loads_total")
    r = ol.generate(model=MODEL, prompt="Hi", options={"num_predict": 1, "num_ctx": 100000})
    assert r.done
    r = ol.generate(model=MODEL, prompt="Hi", options={"num_predict": 1, "num_ctx": 64})
    assert r.done
    assert server.metric("smelt_model_loads_total") == loads
    status, _, body = request("GET", server.url + "/api/ps")
    m = json.loads(body)["models"][0]
    kv = m["kv_cache"]
    assert m["num_parallel"] >= 1
    assert kv["size"] > 0 and kv["blocks"] * kv["block_positions"] >= m["context_length"]
    assert kv["blocks_used"] == 0 and kv["running"] == 0
    assert server.metric("smelt_kv_cache_bytes") == kv["size"]
