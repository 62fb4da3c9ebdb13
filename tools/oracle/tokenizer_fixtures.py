#!/usr/bin/env python3
"""Tokenizer conformance fixtures from llama.cpp (through llama-cpp-python).

Writes
  fixtures/tokenizer/corpus.json            the test strings (built here, deterministically)
  fixtures/tokenizer/<model-stem>.json      llama.cpp's answers for each real test model:
    vocab   : n_tokens, bos, eos, eot, add_bos, add_eos, the end-of-generation ids
    cases[i]: for corpus string i
      plain    ids of tokenize(text, add_special=False, parse_special=False)
      special  ids of tokenize(text, add_special=True,  parse_special=True)
      detok_plain / detok_special
               llama_detokenize(ids, remove_special=False, unparse_special=False / True)
               as {"text": str} or, when not UTF-8, {"hex": str}
    pieces  : {id: hex of token_to_piece(id, special=True), ...} for a sample of ids, and the
              same with special=False in pieces_plain
  fixtures/tokenizer/smollm2-pre-<name>.json
              the same cases (no pieces) for copies of the SmolLM2 GGUF's metadata whose
              tokenizer.ggml.pre names another pre-tokenizer (llama-bpe, qwen2, default, gpt-2,
              qwen35), to check those splitters against llama.cpp with a real BPE vocabulary

Run with the oracle venv:  /work/oracle-venv/bin/python tools/oracle/tokenizer_fixtures.py
Models come from ~/.cache/smelt/test-models (or $SMELT_TEST_MODELS); see scripts/fetch_models.py.
"""
import ctypes
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "tokenizer"
MODELS_DIR = Path(os.environ.get("SMELT_TEST_MODELS", Path.home() / ".cache" / "smelt" / "test-models"))
MODELS = ["smollm2-135m-instruct-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
PRE_VARIANTS = ["llama-bpe", "qwen2", "default", "gpt-2", "qwen35"]


# ---- the corpus --------------------------------------------------------------------------------

def corpus():
    s = []
    # Plain prose.
    s += [
        "Hello world", "Hello, world!", "hello world", "HELLO WORLD", " Hello world", "Hello world ",
        "The quick brown fox jumps over the lazy dog.", "A", "a", "I", "Hi!", "What's up?",
        "This is a test. This is only a test.", "Once upon a time, in a land far, far away...",
        "E=mc^2 is Einstein's famous equation.", "The year 2024 was a leap year; 2025 is not.",
        "Mr. Smith went to Washington D.C. on Jan. 5th.", "She said: \"Don't do that!\"",
        "Question? Answer! Exclamation... Ellipsis…", "semi;colon:colon,comma.period",
    ]
    # Contractions in many cases and positions.
    s += [
        "I'm", "i'M", "I'M", "you're", "YOU'RE", "You'Re", "we've", "WE'VE", "they'll", "THEY'LL", "she'd",
        "SHE'D", "it's", "IT'S", "It'S", "don't", "DON'T", "can't won't shouldn't", "'s", "'S", "'t", "'re",
        "'ve", "'ll", "'d", "'m", "'", "''", "'''", "rock'n'roll", "O'Neil's", "the dog's bone",
        "'quoted'", "y'all'd've", "l'homme d'État", "it’s (curly apostrophe)", " 's", "x'LL y'Ll z'lL",
    ]
    # Whitespace.
    for n in (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 40):
        s.append(" " * n)
        s.append("a" + " " * n + "b")
    s += [
        "\t", "\t\t", "\t\t\t\tindented", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \n ",
        "\t \n", "a\nb", "a\n\nb", "a\r\nb", "line1\nline2\nline3", "  leading", "trailing  ", "  both  ",
        "\n\n\n\nmany newlines\n\n\n\n", "mixed \t\n \t\n spaces", "tab\tseparated\tvalues", "a \n\n b",
        "\u00a0nbsp\u00a0", "ideographic\u3000space", "line\u2028separator", "para\u2029graph", "nel\u0085line",
        "thin\u2009space", "zero\u200bwidth", "\v\f", " " * 64 + "x", "\n" * 40, "\t" * 35 + "end",
        "word  \n  word", "end with newline\n", "\n start with newline", " \t \t ",
    ]
    # Digits.
    for n in range(1, 26):
        s.append("".join(str((i * 7 + 3) % 10) for i in range(n)))
    s += [
        "3.14159", "1,000,000", "1 000 000", "-42", "+7", "0x1F", "1e-9", "12:30", "2024-01-31", "v1.2.3",
        "abc123def", "123abc", "a1b2c3", "٠١٢٣٤٥٦٧٨٩", "१२३", "１２３", "²³", "½ ¾", "Ⅻ", "①②③", "10%",
        "$100", "€50", "#1", "99 bottles", "007",
    ]
    # Scripts.
    s += [
        "Γειά σου Κόσμε", "Привет, мир!", "Здравствуйте", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
        "हिन्दी में लिखा", "สวัสดีชาวโลก", "안녕하세요 세계", "こんにちは世界", "カタカナ", "ひらがな",
        "你好，世界！", "我爱自然语言处理。", "繁體中文測試", "বাংলা ভাষা", "தமிழ் மொழி", "ქართული ენა",
        "Հայերեն լեզու", "አማርኛ ቋንቋ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "Tiếng Việt có dấu", "Ελληνικά ΚΕΦΑΛΑΙΑ",
        "Ünïcödé àçcénts", "straße", "ǅemal", "İstanbul ıi", "Ærøskøbing", "naïve café résumé",
        "e\u0301 (combining acute)", "Z\u0351\u0353a\u0357l\u0358g\u035co", "ﬁﬂ ligatures", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙",
        "𐍈 gothic", "𓂀 hieroglyph",
    ]
    # Emoji.
    s += [
        "😀", "😀😃😄", "I ❤️ you", "👍", "👍🏽", "👍🏿👍🏻", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "🇫🇷🇯🇵",
        "1️⃣2️⃣", "🤷‍♂️", "emoji at end 🎉", "🎉 emoji at start", "mixed 😀text😀mixed", "🧑‍🤝‍🧑",
        "☃", "✓✗", "♠♥♦♣",
    ]
    # Code.
    s += [
        "def f(x):\n    return x * 2\n",
        "fn main() {\n    println!(\"Hello, world!\");\n}\n",
        "#include <stdio.h>\nint main(void) { return 0; }",
        "const add = (a, b) => a + b;",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "<html><body><div class=\"x\">Hi</div></body></html>",
        "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "if [ -f ~/.bashrc ]; then source ~/.bashrc; fi",
        "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
        "\\begin{equation} \\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2} \\end{equation}",
        "# Title\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n",
        "x += 1; y -= 2; z *= 3; w /= 4; v %= 5; u **= 6",
        "a == b && c != d || !e",
        "let v: Vec<Option<&'static str>> = vec![];",
        "impl<'a> Foo<'a> for Bar {}",
        "    indented code\n        more indented\n",
        "@decorator\nclass Foo(Base):\n    pass",
        "std::vector<std::string> v{\"a\", \"b\"};",
        "console.log(`template ${literal}`);",
        "<?php echo $var; ?>",
        "SELECT * FROM t; -- comment\n/* block */",
        "path/to/file.txt C:\\Windows\\System32",
        "https://example.com/path?q=1&r=2#frag",
        "user.name+tag@example.co.uk",
        "git commit -m \"fix: handle edge-case\"",
        "0xDEADBEEF 0b1010 0o777",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "CamelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case-name",
        "HTTPServerError iPhone15Pro XMLHttpRequest",
    ]
    # Text that looks like special tokens (real, partial, nested, in context).
    s += [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start", "<|im_", "im_start|>", "<|im_start|", "|im_end|>", "<<|im_start|>>", "<|im_start|><|im_end|>",
        "text<|im_end|>text", " <|im_end|> ", "<|endoftext|><|endoftext|>",
        "<start_of_turn>", "<end_of_turn>", "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_tur", "start_of_turn>", "<start_of_turn", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>",
        "<bos>Hello", "Hello<eos>", "<s>", "</s>", "<s>hi</s>", "[multimodal]", "<start_of_image>",
        "<end_of_image>", "<unused0>", "<unused99>", "<reponame>", "<filename>", "<file_sep>", "<gh_stars>",
        "<jupyter_code>", "<h1>Title</h1>", "<div>block</div>", "<br>", "<table><tr><td>", "< bos >", "<BOS>",
        "<|IM_START|>", "<|im_start|>\n\n\n", "  <start_of_turn>  ", "\n<end_of_turn>\n", "<eos><eos><bos>",
    ]
    # Punctuation and symbols.
    s += [
        "...", "!!!", "?!", "---", "—–-", "a+b=c", "<=>", "^~|", "`code`", "©®™", "€£¥$", "«guillemets»",
        "“smart quotes”", "„German“", "…", "∑∫√∞≠≤≥", "←↑→↓", "• bullet", "§¶†‡", "@#$%^&*()_+",
        "[]{}()<>", "\\/|", "~`!", "''\"\"", "¡¿", "、。「」", "，；：", "—", "__init__", "**bold** _it_",
    ]
    # Valid UTF-8 that looks odd.
    s += [
        "\ufffd", "\ufeffBOM start", "\uffff", "\U0010ffff", "\ue000 private", "\uf8ff", "\u0301", "\u200d",
        "\u200c", "\u200f\u202e RTL override", "\u00ad soft hyphen", "Ã©", "Ã¤Ã¶Ã¼", "\x00", "a\x00b",
        "\x01\x02\x03", "\x1b[31mred\x1b[0m", "\x7f", "\u2060word joiner", "\U0001f9ff", "\U000e0041 tag",
        "\u0378 unassigned", "\u2ffc newly assigned", "\U0001fae8 newer emoji",
    ]
    # Empty and tiny.
    s += ["", " ", "  ", "'", "\"", ".", ",", "-", "_", "0"]
    # Long strings.
    lorem = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
             "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.")
    s += [
        lorem, lorem * 5, " ".join([lorem] * 3) + "\n\n" + lorem, "a" * 300, "ab" * 150, "1" * 200,
        " " * 100, "😀" * 50, "中文" * 100, "word " * 200, ("def f():\n    pass\n\n" * 20),
    ]
    # Seeded random mixtures of everything above, to poke at boundaries between classes.
    pools = [
        "abc", "XYZ", " ", "  ", "\n", "\t", "123", "4567", "'s", "'LL", "!", "?", "...", "中", "😀", "👍🏽",
        "é", "e\u0301", "ß", "Ω", "٣", "<|im_end|>", "<start_of_turn>", "<eos>", "</s>", "<br>", "\u00a0",
        "\r\n", "$", "+", "<", "=", "^", "|", "~", "`", "_", "-", "/", "\\", "ﬁ", "١٢", "Ⅻ",
    ]
    rng = random.Random(20240601)
    for _ in range(80):
        s.append("".join(rng.choice(pools) for _ in range(rng.randint(2, 14))))
    return s


# ---- llama.cpp --------------------------------------------------------------------------------

def as_text(b: bytes):
    try:
        return {"text": b.decode("utf-8")}
    except UnicodeDecodeError:
        return {"hex": b.hex()}


def write_pre_variant(src, dst, pre):
    """A tensor-less copy of `src`'s metadata with tokenizer.ggml.pre set to `pre`."""
    from gguf import GGUFReader, GGUFValueType as T, GGUFWriter

    r = GGUFReader(str(src))
    arch_field = r.fields["general.architecture"]
    w = GGUFWriter(str(dst), bytes(arch_field.parts[arch_field.data[0]]).decode())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        t = f.types[0]
        if t == T.ARRAY:
            sub = f.types[1]
            if sub == T.STRING:
                val = [bytes(f.parts[i]) for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(key, val, t, sub)
        elif t == T.STRING:
            val = pre.encode() if key == "tokenizer.ggml.pre" else bytes(f.parts[f.data[0]])
            w.add_key_value(key, val, t)
        else:
            w.add_key_value(key, f.parts[f.data[0]].tolist()[0], t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    import tempfile

    import llama_cpp

    strings = corpus()
    assert len(strings) >= 300, len(strings)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "corpus.json").write_text(json.dumps({"strings": strings}, ensure_ascii=False, indent=0) + "\n")

    tmp = tempfile.TemporaryDirectory()
    jobs = [(name, MODELS_DIR / name, name[: -len(".gguf")], True) for name in MODELS]
    for pre in PRE_VARIANTS:
        path = Path(tmp.name) / f"smollm2-pre-{pre}.gguf"
        write_pre_variant(MODELS_DIR / MODELS[0], path, pre)
        jobs.append((MODELS[0], path, f"smollm2-pre-{pre}", False))

    for name, path, stem, with_pieces in jobs:
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llm._model.vocab
        n_tokens = llama_cpp.llama_vocab_n_tokens(vocab)

        def detok(ids, unparse):
            arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
            cap = 64 + 64 * len(ids)
            buf = ctypes.create_string_buffer(cap)
            n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, unparse)
            assert 0 <= n <= cap, n
            return buf.raw[:n]

        def piece(i, special):
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(vocab, i, buf, 256, 0, special)
            assert 0 <= n <= 256, n
            return buf.raw[:n].hex()

        cases = []
        for text in strings:
            raw = text.encode("utf-8")
            plain = llm.tokenize(raw, add_bos=False, special=False)
            special = llm.tokenize(raw, add_bos=True, special=True)
            cases.append({
                "plain": plain,
                "special": special,
                "detok_plain": as_text(detok(plain, False)),
                "detok_special": as_text(detok(special, True)),
            })

        if not with_pieces:
            out = {"model": name, "pre": stem.split("smollm2-pre-")[1], "cases": cases}
            (OUT / f"{stem}.json").write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
            print(f"{stem}: {len(cases)} cases", file=sys.stderr)
            continue

        # Pieces: the first ids (specials, bytes), every non-normal token, and a stride.
        sample = set(range(min(400, n_tokens))) | set(range(0, n_tokens, 97)) | {n_tokens - 1}
        for i in range(n_tokens):
            if llama_cpp.llama_vocab_get_attr(vocab, i) != 4:  # LLAMA_TOKEN_ATTR_NORMAL
                sample.add(i)
        sample = sorted(sample)
        ret = {
            "model": name,
            "vocab": {
                "n_tokens": n_tokens,
                "bos": llama_cpp.llama_vocab_bos(vocab),
                "eos": llama_cpp.llama_vocab_eos(vocab),
                "eot": llama_cpp.llama_vocab_eot(vocab),
                "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
                "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
                "eog": [i for i in range(n_tokens) if llama_cpp.llama_vocab_is_eog(vocab, i)],
                "control": [i for i in range(n_tokens) if llama_cpp.llama_vocab_is_control(vocab, i)],
            },
            "pieces": {str(i): piece(i, True) for i in sample},
            "pieces_plain": {str(i): piece(i, False) for i in sample},
            "cases": cases,
        }
        (OUT / f"{stem}.json").write_text(json.dumps(ret, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(f"{name}: {len(cases)} cases, {len(sample)} pieces", file=sys.stderr)


if __name__ == "__main__":
    main()
