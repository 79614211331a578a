"""llama.cpp's own convert_hf_to_gguf.py on tiny test models, as one subprocess:

    python convert_hf.py LLAMA_CPP_DIR HF_DIR OUT.gguf [HF_DIR OUT.gguf ...]

Runs the converter from the llama.cpp source (with its own gguf-py) unchanged but for one thing:
the tiny models' byte-level tokenizer is not one whose hash the converter knows, so its
pre-tokenizer is named "gpt-2" (the regex that tokenizer uses) instead of refused."""
import runpy
import sys

src, pairs = sys.argv[1], sys.argv[2:]
sys.path[:0] = [src, f"{src}/gguf-py"]
from conversion import base  # noqa: E402  (the converter's own package)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
for hf_dir, out in zip(pairs[::2], pairs[1::2]):
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", "f32"]
    runpy.run_path(f"{src}/convert_hf_to_gguf.py", run_name="__main__")
