"""Write a GGUF holding only the tokenizer.ggml.* keys of another GGUF (a few MB), so synthetic
models can be made on a machine the real model cannot be carried to:
python tools/cuda/vocab_only.py SRC.gguf OUT.gguf"""
import sys

import gguf

src, out = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(src)
w = gguf.GGUFWriter(out, arch=r.fields["general.architecture"].contents())
for name, f in r.fields.items():
    if not name.startswith("tokenizer.ggml."):
        continue
    t = f.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        w.add_array(name, f.contents())
    elif t == gguf.GGUFValueType.STRING:
        w.add_string(name, f.contents())
    else:
        w.add_key_value(name, f.contents(), t)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
