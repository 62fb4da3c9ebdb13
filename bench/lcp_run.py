"""One llama.cpp measurement (through llama-cpp-python), printed as one JSON object with the
same keys and procedure as `smelt bench --json -r 1`.

Run in a fresh process per measurement, so peak RSS and load time are this model's alone.
The hot loop calls llama.cpp's C API directly (llama_decode, llama_get_logits_ith) and takes
the argmax through a NumPy view of the logits, so Python adds microseconds per token, not a
copy of the logits.
"""

import argparse
import ctypes
import json
import time

import numpy as np


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    a = ap.parse_args()

    import llama_cpp

    baseline_kb = rss_kb("VmRSS")
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.p + a.n + 8,
        n_batch=max(a.p, 1),
        n_ubatch=min(max(a.p, 1), 512),
        n_threads=a.t,
        n_threads_batch=a.t,
        verbose=False,
    )
    load_ms = (time.perf_counter() - t0) * 1e3
    ctx = llm.ctx
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    mem = llama_cpp.llama_get_memory(ctx)

    def decode(tokens):
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")

    def argmax():
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    # The same prompt ids as smelt bench.
    prompt = [(i * 7919 + 1) % n_vocab for i in range(a.p)]
    res = {}
    for rep in range(2):  # 0: warm-up (cold first token), 1: measured
        llama_cpp.llama_memory_clear(mem, True)
        t = time.perf_counter()
        for i in range(0, len(prompt), 512):
            decode(prompt[i : i + 512])
        tok = argmax()
        pre = time.perf_counter() - t
        n_gen = min(a.n, 2) if rep == 0 else a.n
        t = time.perf_counter()
        for _ in range(n_gen):
            decode([tok])
            tok = argmax()
        dec = time.perf_counter() - t
        if rep == 0:
            res["first_token_ms"] = pre * 1e3
            continue
        res["prefill_tps"] = a.p / pre
        res["decode_tps"] = a.n / dec if a.n else 0.0
        res["ttft_ms"] = pre * 1e3
    res.update(
        {
            "model": a.model,
            "backend": "llama.cpp",
            "threads": a.t,
            "n_prompt": a.p,
            "n_gen": a.n,
            "load_ms": load_ms,
            "load_to_first_token_ms": load_ms + res["first_token_ms"],
            # The interpreter and NumPy are not llama.cpp's: subtract their resident set.
            "peak_rss_bytes": (rss_kb("VmHWM") - baseline_kb) * 1024,
            "peak_rss_raw_bytes": rss_kb("VmHWM") * 1024,
        }
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
