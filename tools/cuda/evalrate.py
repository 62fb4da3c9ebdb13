#!/usr/bin/env python3
"""One client through `smelt serve`: the server's own eval rate (eval_count / eval_duration of
non-streamed /api/generate requests, what `ollama run --verbose` prints), the measure of
cuda.md v27 (the streamed inter-token gaps of `smelt bench --serve` coalesce below a
millisecond). Starts `smelt serve` on a free loopback port with a store of its own, makes one
warm-up request (load, compile) and N measured ones one after another, prints each eval rate
and the median.

    evalrate.py SMELT MODEL N TEMPERATURE TOKENS [REPEAT_PENALTY]

Environment: the server's (SMELT_NUM_PARALLEL, SMELT_CUDA_*); EVAL_REPEAT sets the prompt's
length (sentences, 6 by default), EVAL_PROMPT=1 also prints each request's prompt tokens, prompt
eval and total time (ms)."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request

smelt, model, n, temp, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rp = float(sys.argv[6]) if len(sys.argv) > 6 else 1.1
store = tempfile.mkdtemp()
env = dict(os.environ, SMELT_MODELS=store)
p = subprocess.Popen([smelt, "serve", "--host", "127.0.0.1", "--port", "0"], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
addr = None
for line in p.stderr:
    if line.startswith("smelt listening on http://"):
        addr = line.split("http://")[1].split()[0]
        break
if addr is None:
    sys.exit("the server did not start")
sentence = "Write a long story about a lighthouse keeper who finds a message in a bottle. "
prompt = sentence * int(os.environ.get("EVAL_REPEAT", "6"))
rates, pe = [], []
try:
    for i in range(n + 1):
        body = json.dumps({"model": model, "prompt": prompt + str(i), "stream": False, "raw": True,
                           "options": {"num_predict": tokens, "temperature": temp,
                                       "repeat_penalty": rp, "seed": i}}).encode()
        req = urllib.request.Request(f"http://{addr}/api/generate", body, {"Content-Type": "application/json"})
        r = json.load(urllib.request.urlopen(req, timeout=300))
        if i == 0:
            continue
        # A request the model ends at once (a synthetic model's end-of-generation token) has
        # no eval time: its rate prints as 0 and the median takes it as it is.
        ec, ed = r["eval_count"], r["eval_duration"]
        rates.append(ec / (ed / 1e9) if ed else 0.0)
        pe.append((r.get("prompt_eval_count", 0), r.get("prompt_eval_duration", 0) / 1e6, r.get("total_duration", 0) / 1e6))
finally:
    p.terminate()
    p.wait()
if os.environ.get("EVAL_PROMPT"):
    print("prompt: " + " ".join("%d tok %.2f ms (total %.1f)" % x for x in pe))
med = statistics.median(rates)
print("eval rate tok/s: " + " ".join("%.1f" % x for x in rates)
      + " | median %.1f = %.3f ms a token" % (med, 1000 / med if med else float("inf")))
