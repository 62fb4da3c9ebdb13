#!/usr/bin/env python3
"""Golden model-level fixtures from llama.cpp (through llama-cpp-python).

For each real test model this writes fixtures/oracle/<model-stem>/:

  meta.json                 versions, settings, perplexity results, calibration numbers, file table
  corpus_tokens.i32         fixtures/oracle/text.txt tokenised as llama-perplexity does it
  tf_top_ids.i32            teacher-forced top-32 token ids        [n_positions, 32]
  tf_top_logprobs.f32       their log-probabilities (full-vocab)   [n_positions, 32]
  tf_target_ids.i32         the actual next token                  [n_positions]
  tf_target_logprobs.f32    its log-probability                    [n_positions]
  tf_rest_logprobs.f32      log of the probability mass outside the top-32 [n_positions]
  greedy.json               10 greedy continuations (prompt ids, output ids, top-2 logit margins)

All binary files are raw little-endian arrays without a header; meta.json gives dtype and shape.
fixtures/oracle/README.md documents the format and the methods.

Run (needs the venv with llama-cpp-python, numpy and jinja2; see tools/oracle/README.md):

    /work/oracle-venv/bin/python tools/oracle/model_fixtures.py            # both models
    /work/oracle-venv/bin/python tools/oracle/model_fixtures.py --models smollm2 --out /tmp/x
    /work/oracle-venv/bin/python tools/oracle/model_fixtures.py --verify 2   # recheck 2 chunks + greedy

Models are read from $SMELT_TEST_MODELS or ~/.cache/smelt/test-models (scripts/fetch_models.py).
The output is deterministic (same bytes on a rerun with the same llama.cpp build and thread count)
except for meta.json's "generated_at".
"""
import argparse
import ctypes
import datetime
import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "fixtures" / "oracle" / "text.txt"

MODELS = {
    "smollm2": "smollm2-135m-instruct-q4_1.gguf",
    "gemma": "gemma-3-270m-q4_k_m.gguf",
}

# llama-cpp-python does not expose the vendored llama.cpp commit at run time; this table is
# read off the sdist's CHANGELOG ("update llama.cpp to ggml-org/llama.cpp@<commit>").
LLAMA_CPP_COMMIT = {"0.3.36": "0c1e57098"}

N_THREADS = 2
TOP_K = 32
TF_N_CTX = 512
PPL_N_CTX = (512, 256)
GREEDY_NEW_TOKENS = 32
# Rows of logits turned into float64 log-probabilities at once (Gemma's vocabulary has 262144
# entries: a whole 512-row chunk in float64 would be 1 GiB).
ROW_BLOCK = 64

# Greedy prompts. "raw" prompts are tokenised with add_special=True (BOS per the model's rule)
# and parse_special=True; "chat" prompts are rendered with the model's own GGUF chat template
# and tokenised with add_special=False, parse_special=True, as llama-cpp-python's chat
# completion does for Jinja templates (the template itself writes any BOS).
PROMPTS = [
    ("question", "raw", "What is the capital of France? The capital of France is"),
    ("code", "raw", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("list", "raw", "Here is a list of the planets in our solar system, in order from the Sun:\n1."),
    ("story", "raw", "Once upon a time, in a small village by the sea, there lived"),
    ("json", "raw", '{"name": "Alice", "age": 30, "languages": ["English", '),
    ("arithmetic", "raw", "Question: A train travels at 60 miles per hour for 3 hours. How far does it go?\nAnswer:"),
    ("non_ascii", "raw", "Le café de la gare est fermé le dimanche, mais"),
    ("chat_user", "chat", [{"role": "user", "content": "What are three tips for staying healthy?"}]),
    ("chat_system", "chat", [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]),
    ("chat_multi_turn", "chat", [
        {"role": "user", "content": "Hi! Can you help me write a short poem?"},
        {"role": "assistant", "content": "Of course! What should the poem be about?"},
        {"role": "user", "content": "The ocean at night."},
    ]),
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The stored fixtures use an f32 KV cache with flash attention off: llama.cpp's most exact
# attention (K·Q, softmax and V·softmax all in f32). llama-cpp-python's default (f16 KV cache,
# flash attention off) and flash attention on are evaluated for calibration only: on SmolLM2 the
# f16 KV cache alone moves the next-token distribution by a mean KL of ~4e-3 and flips ~4% of
# argmaxes, which would hide smaller bugs in an f32 implementation compared against it.
STORED = {"name": "kv_f32_fa_off", "flash_attn": False, "kv_type": "f32"}
CALIBRATION = [
    {"name": "kv_f16_fa_off", "flash_attn": False, "kv_type": "f16",
     "note": "llama-cpp-python's default settings"},
    {"name": "kv_f16_fa_on", "flash_attn": True, "kv_type": "f16",
     "note": "flash attention on (llama.cpp's CLI default 'auto' picks it on CPU)"},
]
KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}


def open_model(path: Path, n_ctx: int, setting: dict) -> Llama:
    # n_batch = n_ubatch = n_ctx: a chunk is decoded in one physical batch, as llama-perplexity
    # does for n_ctx <= its n_ubatch of 512.
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        flash_attn=setting["flash_attn"],
        type_k=KV_TYPES[setting["kv_type"]],
        type_v=KV_TYPES[setting["kv_type"]],
        verbose=False,
    )


def eval_logits(llm: Llama, tokens) -> np.ndarray:
    """Logits [len(tokens), n_vocab] of one sequence evaluated from an empty KV cache."""
    llm.reset()  # n_tokens = 0; eval() then removes every cached position >= 0
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32, copy=True)


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax per row, in the order perplexity.cpp uses: float max, float
    differences and expf, a double sum, a double log."""
    m = logits.max(axis=1, keepdims=True)
    d = logits - m  # float32, like `logits[i] - max_logit`
    s = np.exp(d).astype(np.float64).sum(axis=1, keepdims=True)
    return d.astype(np.float64) - np.log(s)


def chunk_inputs(corpus_tokens, i: int, n_ctx: int, add_bos: bool, bos: int):
    """Chunk i of the corpus as llama-perplexity feeds it: its first token becomes BOS when the
    vocabulary adds BOS. Returns (inputs, original tokens)."""
    orig = list(corpus_tokens[i * n_ctx:(i + 1) * n_ctx])
    inp = list(orig)
    if add_bos:
        inp[0] = bos
    return inp, orig


class Perplexity:
    """perplexity() of tools/perplexity/perplexity.cpp: n_chunk = n_tokens / n_ctx
    non-overlapping chunks; the logits of positions first = n_ctx/2 .. n_ctx-2 predict tokens
    first+1 .. n_ctx-1 (n_ctx - first - 1 per chunk); PPL = exp(mean NLL)."""

    def __init__(self, n_ctx: int):
        self.n_ctx = n_ctx
        self.first = n_ctx // 2
        # per chunk, the (sum NLL, sum NLL^2, count) of each row block in order; the totals are
        # summed from these in order, so runs over chunk ranges merge to the same bits
        self.chunks = []

    def begin_chunk(self) -> None:
        self.chunks.append([])

    def merge(self, other: "Perplexity") -> None:
        self.chunks.extend(other.chunks)

    def add_rows(self, r0: int, lp: np.ndarray, orig) -> None:
        """Log-probabilities of rows r0.. of the current chunk (orig: its original tokens)."""
        rows = [r for r in range(r0, r0 + lp.shape[0]) if self.first <= r <= self.n_ctx - 2]
        if not rows:
            return
        targets = np.array([orig[r + 1] for r in rows])
        v = -lp[np.array(rows) - r0, targets]
        self.chunks[-1].append((float(v.sum()), float((v * v).sum()), len(rows)))

    def result(self) -> dict:
        nll = nll2 = 0.0
        count = 0
        chunk_nll = []
        for blocks in self.chunks:
            cs, cn = 0.0, 0
            for b_sum, b_sum2, n in blocks:
                nll += b_sum
                nll2 += b_sum2
                count += n
                cs += b_sum
                cn += n
            chunk_nll.append(cs / cn)
        mean = nll / count
        var = nll2 / count - mean * mean
        return {
            "n_ctx": self.n_ctx,
            "n_chunks": len(self.chunks),
            "first": self.first,
            "scored_per_chunk": self.n_ctx - self.first - 1,
            "count": count,
            "mean_nll": mean,
            "ppl": float(np.exp(mean)),
            # llama-perplexity's "+/-": sqrt(var/(count-1)) * ppl
            "ppl_stderr": float(np.sqrt(var / (count - 1)) * np.exp(mean)) if var > 0 else None,
            "chunk_mean_nll": chunk_nll,
        }


def perplexity(llm: Llama, corpus_tokens, n_ctx: int, add_bos: bool, bos: int) -> dict:
    acc = Perplexity(n_ctx)
    for i in range(len(corpus_tokens) // n_ctx):
        inp, orig = chunk_inputs(corpus_tokens, i, n_ctx, add_bos, bos)
        logits = eval_logits(llm, inp)
        acc.begin_chunk()
        acc.add_rows(acc.first, log_softmax_rows(logits[acc.first:n_ctx - 1]), orig)
    return acc.result()


def top_k_rows(lp: np.ndarray, k: int):
    """Indices [rows, k] of the k largest entries per row, by descending value, ties by id."""
    part = np.argpartition(-lp, k, axis=1)[:, : k + 1]
    # a partition can cut a tie at the k-th value; take every entry >= the k-th value
    out = np.empty((lp.shape[0], k), dtype=np.int64)
    for r in range(lp.shape[0]):
        kth = np.sort(lp[r, part[r]])[::-1][k - 1]
        cand = np.nonzero(lp[r] >= kth)[0]
        order = np.lexsort((cand, -lp[r, cand]))
        out[r] = cand[order[:k]]
    return out


def kl_stats(lp_p: np.ndarray, lp_q: np.ndarray, top: np.ndarray) -> tuple:
    """Per row: full-vocab KL(P||Q) and its top-k-plus-rest estimate (the KL of the two
    distributions coarsened to {top-k of P} + one bucket for everything else)."""
    p = np.exp(lp_p)
    full = (p * (lp_p - lp_q)).sum(axis=1)
    rows = np.arange(lp_p.shape[0])[:, None]
    in_top = np.zeros_like(lp_p, dtype=bool)
    in_top[rows, top] = True
    q = np.exp(lp_q)
    p_rest = np.where(in_top, 0.0, p).sum(axis=1)
    q_rest = np.where(in_top, 0.0, q).sum(axis=1)
    est = (p[rows, top] * (lp_p[rows, top] - lp_q[rows, top])).sum(axis=1)
    nz = p_rest > 0
    est[nz] += p_rest[nz] * (np.log(p_rest[nz]) - np.log(q_rest[nz]))
    return full, est


def tf_block(lp: np.ndarray, r0: int, orig) -> tuple:
    """Stored arrays for rows r0.. of a chunk: top-32 ids and log-probs, target ids and
    log-probs, log of the mass outside the top-32."""
    top = top_k_rows(lp, TOP_K)
    rows = np.arange(lp.shape[0])
    targets = np.array(orig[r0 + 1:r0 + 1 + lp.shape[0]])
    mask = np.ones_like(lp, dtype=bool)
    mask[rows[:, None], top] = False
    rest = np.where(mask, np.exp(lp), 0.0).sum(axis=1)
    return (top.astype(np.int32), lp[rows[:, None], top].astype(np.float32),
            targets.astype(np.int32), lp[rows, targets].astype(np.float32),
            np.log(np.maximum(rest, 1e-300)).astype(np.float32))


def teacher_forced(llm: Llama, calib_llms: list, corpus_tokens, add_bos: bool, bos: int,
                   chunks: range) -> dict:
    """One pass over the n_ctx=512 chunks: top-32 next-token distributions at every position
    0..n_ctx-2 of each chunk and the perplexity from the stored setting, and for each
    calibration setting its perplexity and its distance from the stored one."""
    n_ctx = TF_N_CTX
    ids, lps, tgt_ids, tgt_lps, rest_lps = [], [], [], [], []
    ppl = Perplexity(n_ctx)
    cal = [{"ppl": Perplexity(n_ctx), "agree": 0, "kl_full": [], "kl_est": [], "chunks": list(chunks)}
           for _ in calib_llms]
    for i in chunks:
        print(f"  chunk {i + 1} of {chunks}", file=sys.stderr, flush=True)
        inp, orig = chunk_inputs(corpus_tokens, i, n_ctx, add_bos, bos)
        logits = eval_logits(llm, inp)
        logits_cal = [eval_logits(c, inp) for c in calib_llms]
        ppl.begin_chunk()
        for c in cal:
            c["ppl"].begin_chunk()
        for r0 in range(0, n_ctx - 1, ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, n_ctx - 1)
            lp = log_softmax_rows(logits[r0:r1])
            ppl.add_rows(r0, lp, orig)
            top, top_lp, targets, tgt_lp, rest_lp = tf_block(lp, r0, orig)
            ids.append(top)
            lps.append(top_lp)
            tgt_ids.append(targets)
            tgt_lps.append(tgt_lp)
            rest_lps.append(rest_lp)
            for c, lg in zip(cal, logits_cal):
                lq = log_softmax_rows(lg[r0:r1])
                c["ppl"].add_rows(r0, lq, orig)
                # argmax with ties to the lowest id, like llama.cpp's greedy sampler
                c["agree"] += int((logits[r0:r1].argmax(axis=1) == lg[r0:r1].argmax(axis=1)).sum())
                f, e = kl_stats(lp, lq, top)
                c["kl_full"].append(f)
                c["kl_est"].append(e)
    arrays = {
        "tf_top_ids.i32": np.concatenate(ids),
        "tf_top_logprobs.f32": np.concatenate(lps),
        "tf_target_ids.i32": np.concatenate(tgt_ids),
        "tf_target_logprobs.f32": np.concatenate(tgt_lps),
        "tf_rest_logprobs.f32": np.concatenate(rest_lps),
    }
    for c in cal:
        c["kl_full"] = np.concatenate(c["kl_full"])
        c["kl_est"] = np.concatenate(c["kl_est"])
    return {"chunks": list(chunks), "arrays": arrays, "ppl": ppl, "cal": cal}


def merge_tf(parts: list) -> dict:
    """Join teacher_forced() states of consecutive chunk ranges, in chunk order. Parts run with
    --no-calibration carry no calibration rows; the calibration covers the chunks it lists."""
    parts = sorted(parts, key=lambda t: t["chunks"][0])
    for t in parts:
        for c in t["cal"]:
            c.setdefault("chunks", list(t["chunks"]))
    out = parts[0]
    for t in parts[1:]:
        assert t["chunks"][0] == out["chunks"][-1] + 1, "chunk ranges must be contiguous"
        out["chunks"] += t["chunks"]
        for k in out["arrays"]:
            out["arrays"][k] = np.concatenate([out["arrays"][k], t["arrays"][k]])
        out["ppl"].merge(t["ppl"])
        if not t["cal"]:
            continue
        if not out["cal"]:
            out["cal"] = t["cal"]
            continue
        for c, d in zip(out["cal"], t["cal"]):
            c["chunks"] += d["chunks"]
            c["ppl"].merge(d["ppl"])
            c["agree"] += d["agree"]
            c["kl_full"] = np.concatenate([c["kl_full"], d["kl_full"]])
            c["kl_est"] = np.concatenate([c["kl_est"], d["kl_est"]])
    return out


def calibration_summary(cal: list) -> list:
    calib = []
    for setting, c in zip(CALIBRATION, cal):
        kl_full, kl_est = c["kl_full"], c["kl_est"]
        n_pos = len(kl_full)
        calib.append({
            "p": STORED["name"] + " (the stored fixtures)",
            "q": setting["name"],
            "q_settings": setting,
            "chunks": c["chunks"],
            "n_positions": n_pos,
            "argmax_agreement": c["agree"] / n_pos,
            "mean_kl_full": float(kl_full.mean()),
            "mean_kl_top32_estimate": float(kl_est.mean()),
            "estimate_over_full": float(kl_est.mean() / kl_full.mean()) if kl_full.mean() > 0 else None,
            "p99_kl_full": float(np.quantile(kl_full, 0.99)),
            "max_kl_full": float(kl_full.max()),
            "ppl_512": c["ppl"].result()["ppl"],
        })
    return calib


# GGUFs without tokenizer.chat_template (this Gemma 3 270M is the base model) are rendered with
# llama.cpp's own built-in template of that family (llama_chat_apply_template), which writes no BOS.
BUILTIN_TEMPLATE = {"gemma3": "gemma"}


def render_chat(llm: Llama, messages) -> tuple:
    """(prompt text, add_special, how it was rendered)."""
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if template is None:
        name = BUILTIN_TEMPLATE[meta["general.architecture"]]
        chat = (llama_cpp.llama_chat_message * len(messages))()
        keep = []
        for m, msg in zip(chat, messages):
            keep.append((msg["role"].encode(), msg["content"].encode()))
            m.role, m.content = keep[-1]
        n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), True, None, 0)
        buf = ctypes.create_string_buffer(n + 1)
        n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), True, buf, n + 1)
        return buf.raw[:n].decode("utf-8"), True, f"llama.cpp built-in template '{name}'"
    bos = llm._model.token_get_text(llm.token_bos())
    eos = llm._model.token_get_text(llm.token_eos())
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                              add_generation_prompt=True)
    return fmt(messages=messages).prompt, False, "GGUF tokenizer.chat_template (jinja2)"


def greedy(llm: Llama) -> list:
    vocab = llm._model.vocab
    out = []
    for name, kind, prompt in PROMPTS:
        rendered_by = None
        if kind == "chat":
            text, add_special, rendered_by = render_chat(llm, prompt)
        else:
            text = prompt
            add_special = True
        ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)
        llm.reset()
        llm.eval(ids)
        gen, second, margins = [], [], []
        stopped = False
        for _ in range(GREEDY_NEW_TOKENS):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            best = int(row.argmax())
            masked = row.copy()
            masked[best] = -np.inf
            runner_up = int(masked.argmax())
            gen.append(best)
            second.append(runner_up)
            margins.append(float(row[best] - row[runner_up]))
            if llama_cpp.llama_vocab_is_eog(vocab, best):
                stopped = True
                break
            llm.eval([best])
        entry = {
            "name": name,
            "kind": kind,
            "text": text,
            "add_special": add_special,
            "parse_special": True,
            "prompt_ids": ids,
            "output_ids": gen,
            "second_ids": second,
            "margins": margins,
            "stopped_on_eog": stopped,
            "output_text": llm.detokenize(gen, special=True).decode("utf-8", errors="replace"),
        }
        if kind == "chat":
            entry["messages"] = prompt
            entry["rendered_by"] = rendered_by
        out.append(entry)
    return out


def write_array(path: Path, a: np.ndarray, dtype: str) -> dict:
    a = np.ascontiguousarray(a.astype(np.dtype(dtype).newbyteorder("<")))
    path.write_bytes(a.tobytes())
    return {"dtype": dtype.lstrip("<"), "shape": list(a.shape), "sha256": sha256_file(path)}


def run_model(key: str, models_dir: Path, out_root: Path, stage: str, chunks: str,
              no_calibration: bool = False) -> None:
    """stage "all" does everything in one process. The stages "tf" (over --chunks A:B),
    "greedy" and "ppl256" can run as separate processes; they leave their results in
    <out>/.parts/, and "merge" joins them. Both ways give the same bytes."""
    model_file = MODELS[key]
    model_path = models_dir / model_file
    stem = model_file[: -len(".gguf")]
    out = out_root / stem
    parts = out / ".parts"
    parts.mkdir(parents=True, exist_ok=True)
    print(f"[{stem}] {stage}: loading", file=sys.stderr)

    llm = open_model(model_path, TF_N_CTX, STORED)
    add_bos = bool(llm._model.add_bos_token())
    bos = llm.token_bos()
    # common_tokenize(ctx, text, add_special=true, parse_special=false), as llama-perplexity does
    corpus_tokens = llm.tokenize(CORPUS.read_bytes(), add_bos=True, special=False)
    n_chunk = len(corpus_tokens) // TF_N_CTX

    if stage in ("all", "tf"):
        a, b = (0, n_chunk) if stage == "all" or not chunks else map(int, chunks.split(":"))
        b = min(b, n_chunk)
        print(f"[{stem}] {len(corpus_tokens)} corpus tokens; n_ctx=512 chunks {a}..{b - 1}: "
              f"teacher-forced top-{TOP_K}, perplexity, calibration settings", file=sys.stderr)
        calib_llms = [] if no_calibration else [open_model(model_path, TF_N_CTX, c) for c in CALIBRATION]
        state = teacher_forced(llm, calib_llms, corpus_tokens, add_bos, bos, range(a, b))
        del calib_llms
        with open(parts / f"tf_{a:03d}_{b:03d}.pkl", "wb") as f:
            pickle.dump(state, f)

    if stage in ("all", "greedy"):
        print(f"[{stem}] greedy continuations", file=sys.stderr)
        greedy_entries = greedy(llm)
        (out / "greedy.json").write_text(
            json.dumps({"prompts": greedy_entries}, indent=1, ensure_ascii=False) + "\n")
        meta_path = out / "meta.json"
        if stage == "greedy" and meta_path.exists():  # keep an existing file table true
            meta = json.loads(meta_path.read_text())
            meta["files"]["greedy.json"] = {"sha256": sha256_file(out / "greedy.json")}
            meta_path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")

    meta_model = llm.metadata
    n_vocab = llm.n_vocab()
    del llm

    if stage in ("all", "ppl256"):
        print(f"[{stem}] perplexity n_ctx=256", file=sys.stderr)
        llm256 = open_model(model_path, 256, STORED)
        (parts / "ppl256.json").write_text(
            json.dumps(perplexity(llm256, corpus_tokens, 256, add_bos, bos)) + "\n")
        del llm256

    if stage not in ("all", "merge"):
        return
    tf_parts = []
    for path in sorted(parts.glob("tf_*.pkl")):
        with open(path, "rb") as f:
            tf_parts.append(pickle.load(f))
    state = merge_tf(tf_parts)
    if state["chunks"] != list(range(n_chunk)):
        raise SystemExit(f"teacher-forced parts cover chunks {state['chunks']}, not 0..{n_chunk - 1}")
    calib = calibration_summary(state["cal"])
    ppl = {"512": state["ppl"].result(), "256": json.loads((parts / "ppl256.json").read_text())}
    files = {"corpus_tokens.i32": write_array(out / "corpus_tokens.i32", np.array(corpus_tokens), "<i4")}
    for name, a in state["arrays"].items():
        files[name] = write_array(out / name, a, "<i4" if name.endswith(".i32") else "<f4")
    files["greedy.json"] = {"sha256": sha256_file(out / "greedy.json")}

    version = llama_cpp.__version__
    meta = {
        "format_version": 1,
        "generator": "tools/oracle/model_fixtures.py",
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_python": version,
        "llama_cpp_commit": LLAMA_CPP_COMMIT.get(version, "unknown"),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "model": {
            "file": model_file,
            "sha256": sha256_file(model_path),
            "architecture": meta_model.get("general.architecture"),
            "n_vocab": n_vocab,
            "add_bos": add_bos,
            "bos_id": bos,
            "eos_id": int(meta_model.get("tokenizer.ggml.eos_token_id", -1)),
        },
        "settings": {
            "backend": "CPU",
            "n_threads": N_THREADS,
            "n_threads_batch": N_THREADS,
            "flash_attn": STORED["flash_attn"],
            "kv_cache_type": STORED["kv_type"],
            "n_batch": "n_ctx",
            "n_ubatch": "n_ctx",
            "logits_all": True,
            "note": "llama-cpp-python defaults otherwise; its default KV cache is f16: see calibration",
        },
        "corpus": {
            "file": "fixtures/oracle/text.txt",
            "sha256": sha256_file(CORPUS),
            "n_tokens": len(corpus_tokens),
            "tokenize": {"add_special": True, "parse_special": False},
        },
        "perplexity": ppl,
        "teacher_forced": {
            "n_ctx": TF_N_CTX,
            "n_chunks": n_chunk,
            "positions_per_chunk": TF_N_CTX - 1,
            "n_positions": n_chunk * (TF_N_CTX - 1),
            "top_k": TOP_K,
            "chunk_input": "corpus_tokens[c*512:(c+1)*512], first token replaced by bos_id when add_bos",
            "position_order": "chunk-major; row c*511+p holds the distribution after input position p "
                              "of chunk c, predicting corpus_tokens[c*512+p+1]",
        },
        "calibration": calib,
        "greedy": {"new_tokens": GREEDY_NEW_TOKENS, "n_prompts": len(PROMPTS),
                   "stop": "after an end-of-generation token (included in output_ids)"},
        "files": files,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"[{stem}] done: ppl512={ppl['512']['ppl']:.4f} ppl256={ppl['256']['ppl']:.4f} "
          + " ".join(f"{c['q']}: agree={c['argmax_agreement']:.4f} kl={c['mean_kl_full']:.2e}" for c in calib),
          file=sys.stderr)


def verify_model(key: str, models_dir: Path, out_root: Path, n_chunks: int, with_greedy: bool) -> bool:
    """Recompute the corpus tokens, the first n_chunks chunks of teacher-forced rows and all
    greedy continuations with the stored setting and compare them bit for bit with the files."""
    model_file = MODELS[key]
    out = out_root / model_file[: -len(".gguf")]
    llm = open_model(models_dir / model_file, TF_N_CTX, STORED)
    add_bos = bool(llm._model.add_bos_token())
    bos = llm.token_bos()
    ok = True

    def check(what: str, same: bool) -> None:
        nonlocal ok
        print(f"[{out.name}] {what}: {'identical' if same else 'DIFFERENT'}", file=sys.stderr)
        ok &= same

    corpus_tokens = llm.tokenize(CORPUS.read_bytes(), add_bos=True, special=False)
    stored_tokens = np.fromfile(out / "corpus_tokens.i32", dtype="<i4")
    check("corpus tokens", np.array_equal(stored_tokens, np.array(corpus_tokens)))
    names = ["tf_top_ids.i32", "tf_top_logprobs.f32", "tf_target_ids.i32",
             "tf_target_logprobs.f32", "tf_rest_logprobs.f32"]
    stored = {n: np.fromfile(out / n, dtype="<i4" if n.endswith(".i32") else "<f4") for n in names}
    n_rows = TF_N_CTX - 1
    for c in range(n_chunks):
        inp, orig = chunk_inputs(corpus_tokens, c, TF_N_CTX, add_bos, bos)
        logits = eval_logits(llm, inp)
        parts = [[] for _ in names]
        for r0 in range(0, n_rows, ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, n_rows)
            for acc, a in zip(parts, tf_block(log_softmax_rows(logits[r0:r1]), r0, orig)):
                acc.append(a)
        for n, acc in zip(names, parts):
            width = TOP_K if n.startswith("tf_top") else 1
            want = stored[n][c * n_rows * width:(c + 1) * n_rows * width]
            check(f"chunk {c} {n}", np.concatenate(acc).reshape(-1).tobytes() == want.tobytes())
    if not with_greedy:
        return ok
    stored_greedy = json.loads((out / "greedy.json").read_text())["prompts"]
    fresh = json.loads(json.dumps(greedy(llm), ensure_ascii=False))
    for a, b in zip(stored_greedy, fresh):
        check(f"greedy {a['name']}", a == b)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma", help="comma list of: " + ",".join(MODELS))
    ap.add_argument("--out", default=str(REPO / "fixtures" / "oracle"))
    ap.add_argument("--models-dir", default=os.environ.get(
        "SMELT_TEST_MODELS", str(Path.home() / ".cache" / "smelt" / "test-models")))
    ap.add_argument("--stage", default="all", choices=["all", "tf", "greedy", "ppl256", "merge"])
    ap.add_argument("--chunks", default="", metavar="A:B", help="chunk range of --stage tf")
    ap.add_argument("--no-calibration", action="store_true",
                    help="stage tf: evaluate only the stored setting on these chunks")
    ap.add_argument("--verify-skip-greedy", action="store_true", help="--verify without the greedy part")
    ap.add_argument("--verify", type=int, metavar="N_CHUNKS", default=None,
                    help="instead of writing, recompute the first N_CHUNKS teacher-forced chunks and "
                         "the greedy continuations and compare them with the files in --out")
    args = ap.parse_args()
    ok = True
    for key in args.models.split(","):
        if args.verify is not None:
            ok &= verify_model(key.strip(), Path(args.models_dir), Path(args.out), args.verify,
                                 not args.verify_skip_greedy)
        else:
            run_model(key.strip(), Path(args.models_dir), Path(args.out), args.stage, args.chunks,
                      args.no_calibration)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
