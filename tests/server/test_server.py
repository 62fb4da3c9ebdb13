"""Server behaviour: concurrency, cancellation, the bounded queue, auth, the Host and CORS guards,
errors in each API's shape, metrics, model memory budget."""

import http.client
import json
import threading
import time

import ollama
import pytest

from conftest import GEMMA3, MODEL, SMOLLM2, http as request


def stream_open(server, path, body, headers=None):
    """Start a streaming request; returns the connection and response (caller reads/closes)."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    return c, c.getresponse()


def test_eight_concurrent_streams_all_complete(server):
    client = ollama.Client(host=server.url, timeout=300)
    results, errors = [None] * 8, []

    def run(i):
        try:
            parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": f"Say {i}."}], stream=True, options={"num_predict": 3, "seed": i}))
            results[i] = parts[-1]
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert all(r is not None and r.done and r.eval_count >= 1 for r in results)


def test_dropped_stream_cancels_its_generation(server):
    cancelled_before = server.metric("smelt_cancelled_requests_total")
    generated_before = server.metric("smelt_generated_tokens_total")
    c, r = stream_open(server, "/api/generate", {"model": MODEL, "prompt": "Write a very long story.", "options": {"num_predict": 2000, "seed": 1}})
    assert r.status == 200
    r.readline()  # the first token arrived: generation is running
    c.close()
    deadline = time.time() + 30
    while time.time() < deadline and server.metric("smelt_cancelled_requests_total") == cancelled_before:
        time.sleep(0.1)
    assert server.metric("smelt_cancelled_requests_total") == cancelled_before + 1
    # It stopped within a few tokens, not after 2000.
    assert server.metric("smelt_generated_tokens_total") - generated_before < 50
    # And the model is free again at once.
    t = time.time()
    ollama.Client(host=server.url).generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    assert time.time() - t < 30


def test_full_queue_answers_503_with_retry_after(make_server):
    # One request at a time (continuous batching would run the second next to the first).
    s = make_server(env={"SMELT_MAX_QUEUE": "1", "SMELT_NUM_PARALLEL": "1"})
    s.create("smollm2", SMOLLM2)
    body = {"model": MODEL, "prompt": "Write a long story.", "options": {"num_predict": 500}}
    running = stream_open(s, "/api/generate", body)
    running[1].readline()  # running
    waiting = stream_open(s, "/api/generate", body)  # queued (its headers arrive once it starts)
    deadline = time.time() + 30
    while time.time() < deadline and s.metric("smelt_queue_depth") < 1:
        time.sleep(0.05)
    assert s.metric("smelt_queue_depth") == 1
    for path, payload in [
        ("/api/generate", body),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ]:
        status, headers, raw = request("POST", s.url + path, payload)
        assert status == 503, raw
        assert int(headers["retry-after"]) >= 1
    running[0].close()
    waiting[0].close()


def test_non_loopback_bind_requires_a_key(make_server, tmp_path):
    from conftest import Server

    refused = Server(tmp_path / "noauth", host="0.0.0.0", wait=False)
    assert refused.proc.wait(timeout=30) != 0
    assert "SMELT_API_KEY" in refused.log_text()
    refused.stop()

    s = make_server(host="0.0.0.0", env={"SMELT_API_KEY": "s3cret", "SMELT_MAX_BODY": "4KiB"})
    s.api_key = "s3cret"
    s.create("smollm2", SMOLLM2)
    status, _, _ = request("GET", s.url + "/")
    assert status == 200  # liveness stays public
    status, headers, body = request("GET", s.url + "/api/tags")
    assert status == 401 and "error" in json.loads(body)
    status, _, body = request("POST", s.url + "/v1/chat/completions", {"model": MODEL, "messages": []})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = request("POST", s.url + "/v1/messages", {}, headers={"x-api-key": "wrong"})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, _, _ = request("GET", s.url + "/api/tags", headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    status, _, _ = request("GET", s.url + "/v1/models", headers={"x-api-key": "s3cret"})
    assert status == 200
    # A body over the limit is refused in the API's own shape.
    big = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 8192}]}
    status, _, body = request("POST", s.url + "/v1/messages", big, headers={"x-api-key": "s3cret"})
    assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large"

    open_server = make_server(host="0.0.0.0", args=["--no-auth"])
    status, _, _ = request("GET", open_server.url + "/api/tags")
    assert status == 200


def test_dns_rebinding_guard_and_cors(server):
    status, _, body = request("GET", server.url + "/api/tags", headers={"Host": "evil.example:11434"})
    assert status == 403 and "host" in json.loads(body)["error"]
    status, _, _ = request("GET", server.url + "/api/tags", headers={"Host": f"localhost:{server.port}"})
    assert status == 200
    status, headers, _ = request("GET", server.url + "/api/tags", headers={"Origin": "http://localhost:3000"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    status, _, _ = request("GET", server.url + "/api/tags", headers={"Origin": "https://evil.example"})
    assert status == 403
    status, headers, _ = request(
        "OPTIONS", server.url + "/v1/chat/completions",
        headers={"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"},
    )
    assert status == 204 and "POST" in headers["access-control-allow-methods"]


def test_configured_origins(make_server):
    s = make_server(env={"SMELT_ORIGINS": "https://*.example.com"})
    status, headers, _ = request("GET", s.url + "/api/version", headers={"Origin": "https://chat.example.com"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://chat.example.com"


@pytest.mark.parametrize(
    "path,body,shape",
    [
        ("/api/chat", b"{not json", "ollama"),
        ("/v1/chat/completions", b"{not json", "openai"),
        ("/v1/messages", b"{not json", "anthropic"),
        ("/api/chat", {"model": MODEL, "messages": "hello"}, "ollama"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "openai"),
        ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": 42}]}, "anthropic"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"temperature": -1}}, "ollama"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"top_p": 2}}, "ollama"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"num_ctx": 0}}, "ollama"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "keep_alive": "forever"}, "ollama"),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "ollama"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "wat"}}}}, "openai"),
        ("/v1/messages", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "anthropic"),
    ],
)
def test_bad_requests_get_clear_400s(server, path, body, shape):
    status, _, raw = request("POST", server.url + path, body)
    assert status == 400, raw
    e = json.loads(raw)
    if shape == "ollama":
        assert isinstance(e["error"], str) and e["error"]
    elif shape == "openai":
        assert e["error"]["type"] == "invalid_request_error" and e["error"]["message"]
    else:
        assert e["type"] == "error" and e["error"]["type"] == "invalid_request_error" and e["error"]["message"]


def test_unknown_model_and_route(server):
    status, _, raw = request("POST", server.url + "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "nope" in json.loads(raw)["error"]
    status, _, raw = request("GET", server.url + "/api/nothing")
    assert status == 404
    # Still serving.
    status, _, _ = request("GET", server.url + "/api/tags")
    assert status == 200


def test_prompt_longer_than_context_is_400_not_truncated(server):
    server.create("smollm2-tiny", SMOLLM2, parameters={"num_ctx": 64})
    status, _, raw = request("POST", server.url + "/api/generate", {"model": "smollm2-tiny", "prompt": "word " * 200, "stream": False})
    assert status == 400 and "context" in json.loads(raw)["error"]


def test_metrics_health_and_ui(server):
    ollama.Client(host=server.url).generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
    status, headers, raw = request("GET", server.url + "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in [
        "smelt_requests_total", "smelt_prompt_tokens_total", "smelt_generated_tokens_total", "smelt_queue_depth",
        "smelt_time_to_first_token_seconds_bucket", "smelt_generation_tokens_per_second_bucket", "smelt_models_loaded",
        "smelt_prompt_cached_tokens_total",
    ]:
        assert name in text, name
    assert server.metric("smelt_generated_tokens_total") >= 2
    status, _, raw = request("GET", server.url + "/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    status, headers, raw = request("GET", server.url + "/ui")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/api/chat" in raw


def test_memory_budget_evicts_lru_and_refuses_what_cannot_fit(make_server):
    ctx = {"SMELT_CONTEXT_LENGTH": "512"}
    # What each model takes, loaded alone.
    probe = make_server(env=ctx)
    probe.create("smollm2", SMOLLM2)
    probe.create("gemma3", GEMMA3)
    c = ollama.Client(host=probe.url, timeout=300)
    sizes = {}
    for name in ["smollm2", "gemma3"]:
        c.generate(model=name, prompt="Hi", options={"num_predict": 1})
        sizes[name] = next(m.size for m in c.ps().models if m.model == f"{name}:latest")
        c.generate(model=name, prompt="", keep_alive=0)
    probe.stop()

    # Room for either model but not both: loading one evicts the other (least recently used).
    budget = max(sizes.values()) + (8 << 20)
    assert budget < sum(sizes.values())
    s = make_server(env={**ctx, "SMELT_MAX_MEMORY": str(budget)})
    s.create("smollm2", SMOLLM2)
    s.create("gemma3", GEMMA3)
    c = ollama.Client(host=s.url, timeout=300)
    c.generate(model="smollm2", prompt="Hi", options={"num_predict": 1})
    assert [m.model for m in c.ps().models] == ["smollm2:latest"]
    c.generate(model="gemma3", prompt="Hi", options={"num_predict": 1})
    assert [m.model for m in c.ps().models] == ["gemma3:latest"]
    c.generate(model="smollm2", prompt="Hi", options={"num_predict": 1})
    assert [m.model for m in c.ps().models] == ["smollm2:latest"]

    # A model that cannot fit at all is refused, not swapped.
    tiny = make_server(env={**ctx, "SMELT_MAX_MEMORY": "1MiB"})
    tiny.create("smollm2", SMOLLM2)
    status, _, raw = request("POST", tiny.url + "/api/generate", {"model": "smollm2", "prompt": "Hi", "stream": False})
    assert status == 507 and "needs" in json.loads(raw)["error"]
