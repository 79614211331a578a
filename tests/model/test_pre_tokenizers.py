"""Each pre-tokenizer a GGUF file may name (tokenizer.ggml.pre) splits text as llama.cpp's own
table says: the regexes and the ignore_merges flag are read from llama.cpp's src/llama-vocab.cpp
(the source that bench/build_llama_server.sh fetches), made into a Hugging Face `tokenizers`
tokenizer with a BPE vocabulary trained on the test texts, and tokenmill's tokenizer from the same
vocabulary and the pre-tokenizer's name must give the same ids on a mixed text set."""
import ast
import json
import os
import re

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from tokenmill.model.loader.tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf

TEXTS = ["Hello, world! 123 4567 89.5 I'm here, you're there, we'LL see", "def f(x):\n    return x ** 2  # square\n\n\n",
         "Ünïcödé: naïve café, Straße, ½ ⅓", "日本語のテキストと中文混合", "emoji 🙂👍🏽 and 🇫🇷 flags",
         "    lots   of\t\twhitespace   \n\n  ", "Привет, как дела? Ça va?", "0.000001e-10 + 1,000,000",
         "camelCaseWords and HTTPServer, iPhone XMLHttpRequest", "path/to/file.txt\r\nC:\\Windows\\ mixed/slashes//",
         "DON'T SHOUT, it's THE END'S START", "x=1;y=22;z=333;w=4444", "tabs\tand\u00a0nbsp\u2003em space"]


def _literals(block: str) -> list[str]:
    """The C++ string literals of a block, outside // comments."""
    code = "\n".join(line for line in block.splitlines() if not line.strip().startswith("//"))
    return [ast.literal_eval('"' + m + '"') for m in re.findall(r'"((?:[^"\\]|\\.)*)"', code)]


def llama_cpp_pre(src: str, name: str) -> tuple[list[str], bool]:
    """(the regexes llama.cpp applies in turn for this pre-tokenizer, its ignore_merges)"""
    with open(os.path.join(src, "src", "llama-vocab.cpp"), encoding="utf-8") as f:
        text = f.read()
    at = text.index(f'tokenizer_pre == "{name}"')
    branch = text[at:text.index("} else if", at)]
    pre_type = re.search(r"pre_type = (LLAMA_VOCAB_PRE_TYPE_\w+);", branch).group(1)
    first = text.index("regex_exprs = {")
    table = text[text.rfind("switch", 0, first):]  # the switch over types that picks the regexes
    case = table.index(f"case {pre_type}:")
    start = table.index("regex_exprs = {", case)
    return _literals(table[start:table.index("};", start)]), "ignore_merges = true" in branch


def _pre_tokenizer(regexes: list[str]):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
                                   + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# a word the vocabulary holds whole but no merge reaches: one token only where ignore_merges is set
WORD, WORD_TOKEN = " quuxwordz", "\u0120quuxwordz"


def reference(regexes: list[str], ignore_merges: bool) -> tuple[Tokenizer, list[str], list[str]]:
    """(the tokenizer, its tokens by id, its merges): a BPE trained on the texts with llama.cpp's
    split, and WORD_TOKEN added to its vocabulary."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = _pre_tokenizer(regexes)
    trained.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    vocab = trained.get_vocab()
    vocab[WORD_TOKEN] = len(vocab)
    merges = [tuple(m) for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = _pre_tokenizer(regexes)
    return tok, sorted(vocab, key=vocab.get), [" ".join(m) for m in merges]


# all but "default" (or no name): tokenmill splits such a file as GPT-2 does, where llama.cpp takes
# a fallback of its own and warns that quality will suffer
@pytest.mark.parametrize("name", sorted(set(PRE_TOKENIZERS) - {"default"}))
def test_splits_as_llama_cpp_says(llama_cpp_source, name):
    regexes, ignore_merges = llama_cpp_pre(llama_cpp_source, name)
    assert regexes, name
    ref, tokens, merges = reference(regexes, ignore_merges)
    ours = tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
                                "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": name,
                                "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.add_bos_token": False})
    for text in TEXTS + ["a" + WORD + "."]:
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text).ids, (name, text)
    assert (len(ref.encode(WORD).ids) == 1) == ignore_merges  # the word tells the two kinds apart
