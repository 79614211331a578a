"""The reliability suite: a real `tokenmill serve` on a tiny random-weight model with a short
context, so that fuzzing, soaking and overloading cost minutes. TOKENMILL_RELIABILITY_LONG=1
runs the long versions (more cases, more requests) on the bundled SmolLM2 instead."""
import os

import pytest

from server_process import Server

LONG = os.environ.get("TOKENMILL_RELIABILITY_LONG") == "1"


def server_args(model_dir: str, **extra) -> list[str]:
    if LONG:  # the bundled model, under the same served name
        args = ["--served-model-name", "tiny", "--max-model-len", "512", "--max-num-seqs", "32", "--max-n", "4"]
    else:
        args = ["--model", model_dir, "--served-model-name", "tiny", "--max-model-len", "96",
                "--kv-cache-memory-gib", "0.02", "--max-n", "4"]
    for k, v in extra.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


@pytest.fixture(scope="session")
def reliability_model(tmp_path_factory):
    """Greedy answers never end by themselves (EOS logit pinned at 0, below the top one): a
    request runs until its limit, the context's end, or its client."""
    import torch
    from tiny_models import EOS, make_hf_model, save_hf_dir
    model = make_hf_model("llama", seed=5, max_position_embeddings=4096)
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()
    return save_hf_dir(model, str(tmp_path_factory.mktemp("tiny-reliability")))


@pytest.fixture(scope="session")
def fuzz_server(reliability_model, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("reliability-logs") / "fuzz.log")
    s = Server(server_args(reliability_model, max_queue=64), log)
    yield s
    s.stop()


def tracebacks(log_path: str) -> list[str]:
    text = open(log_path, errors="replace").read()
    return [chunk[:2000] for chunk in text.split("Traceback (most recent call last)")[1:]]
