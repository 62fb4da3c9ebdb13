"""Start the real `smelt serve` on a free port with the real test models, for the official clients.

The models are registered in a store in a temporary directory through /api/create (`from` a GGUF
path), the way `smelt create NAME --from FILE.gguf` does. The engine is the slow reference path on
a couple of cores, so tests keep prompts short and num_predict small.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

MODELS_DIR = Path(os.environ.get("SMELT_TEST_MODELS", Path.home() / ".cache" / "smelt" / "test-models"))
SMOLLM2 = MODELS_DIR / "smollm2-135m-instruct-q4_1.gguf"
GEMMA3 = MODELS_DIR / "gemma-3-270m-q4_k_m.gguf"
ROOT = Path(__file__).resolve().parents[2]
SMELT_BIN = os.environ.get("SMELT_BIN", str(ROOT / "target" / "debug" / "smelt"))

# Small contexts keep the KV cache (and the memory budget tests) small.
DEFAULT_CTX = "2048"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=120):
    """A raw request: (status, headers, body bytes). Never raises on HTTP errors."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Server:
    """One `smelt serve` process with its own store."""

    def __init__(self, tmp: Path, env=None, args=(), host="127.0.0.1", wait=True):
        self.tmp = tmp
        self.port = free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "store").mkdir(parents=True, exist_ok=True)
        (tmp / "ollama").mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        for k in list(full_env):
            if k.startswith("SMELT_") and k not in ("SMELT_BIN", "SMELT_TEST_MODELS"):
                del full_env[k]
        full_env.update(
            SMELT_MODELS=str(tmp / "store"),
            OLLAMA_MODELS=str(tmp / "ollama"),
            SMELT_HOST=f"{host}:{self.port}",
            SMELT_CONTEXT_LENGTH=DEFAULT_CTX,
            SMELT_DEBUG="1",
        )
        full_env.update(env or {})
        self.log_path = tmp / f"server-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SMELT_BIN, "serve", *args], env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smelt serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                status, _, _ = http("GET", self.url + "/", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"smelt serve did not come up:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def create(self, name: str, path: Path, **extra):
        status, _, body = http("POST", self.url + "/api/create", {"model": name, "from": str(path), "stream": False, **extra}, headers=self.auth_headers())
        assert status == 200, body

    def auth_headers(self):
        key = getattr(self, "api_key", None)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def metric(self, name: str) -> float:
        _, _, body = http("GET", self.url + "/metrics", headers=self.auth_headers())
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("smelt"))
    s.create("smollm2", SMOLLM2)
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path_factory):
    """Extra servers with their own settings, stopped after the test."""
    started = []

    def make(**kw):
        s = Server(tmp_path_factory.mktemp("smelt-extra"), **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


MODEL = "smollm2"
