"""llama.cpp's own convert_hf_to_gguf.py on tiny test models, as one subprocess:

    python convert_hf.py LLAMA_CPP_DIR HF_DIR OUT.gguf [HF_DIR OUT.gguf ...]

Runs the converter from the llama.cpp source (with its own gguf-py) unchanged but for the tiny
models' byte-level tokenizer: it is not one whose hash the converter knows, so its pre-tokenizer
is named "gpt-2" (the regex that tokenizer uses) instead of refused, and the Gemma 2 and Phi-3
converters, which take a SentencePiece file unless told otherwise, read it as a GPT-2 vocabulary."""
import runpy
import sys

src, pairs = sys.argv[1], sys.argv[2:]
sys.path[:0] = [src, f"{src}/gguf-py"]
from conversion import base  # noqa: E402  (the converter's own package)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
# Gemma 2's converter reads only a SentencePiece tokenizer.model; the tiny models have the
# byte-level tokenizer.json, which it then takes as Gemma 3's converter does
from conversion import gemma, phi  # noqa: E402
gemma.Gemma2Model.set_vocab = lambda self: (self._set_vocab_gpt2(), self.gguf_writer.add_add_space_prefix(False))
phi.Phi3MiniModel.set_vocab = lambda self: self._set_vocab_gpt2()  # as it does for Phi-4's GPT2Tokenizer
for hf_dir, out in zip(pairs[::2], pairs[1::2]):
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", "f32"]
    runpy.run_path(f"{src}/convert_hf_to_gguf.py", run_name="__main__")
