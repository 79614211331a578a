"""Embeddings through the `openai` and `ollama` clients, checked against transformers on the
same float32 weights."""
import base64
import struct

import httpx
import numpy as np
import ollama
import openai
import pytest
import torch

TEXTS = [f"text {i}: " + "lorem ipsum " * (i % 9) + "é🙂" * (i % 3) for i in range(64)]


def oai(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_openai_ollama_and_transformers_agree(embed_server, tiny_llama_dir):
    from transformers import AutoModelForCausalLM
    from tiny_models import BOS, make_tokenizer
    a = np.array([d.embedding for d in oai(embed_server).embeddings.create(model="tiny-embed", input=TEXTS).data])
    b = np.array(ollama.Client(host=embed_server.url).embed(model="tiny-embed", input=TEXTS).embeddings)
    assert a.shape == b.shape == (64, 64)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert (a * b).sum(1).min() >= 0.9999
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = make_tokenizer()
    for i in (0, 17, 63):  # mean over the final hidden states (after the last norm)
        ids = [BOS] + tok.encode(TEXTS[i]).ids
        with torch.no_grad():
            h = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        assert float(unit(h.mean(0).numpy()) @ a[i]) >= 0.9999


def test_batch_of_64_equals_one_by_one(embed_server):
    c = oai(embed_server)
    batch = c.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    assert [d.index for d in batch.data] == list(range(64))
    for i in range(0, 64, 9):
        one = c.embeddings.create(model="tiny-embed", input=TEXTS[i], encoding_format="float").data[0].embedding
        assert float(np.dot(unit(one), unit(batch.data[i].embedding))) >= 0.99999


def test_formats_token_ids_dimensions_and_legacy_route(embed_server):
    c = oai(embed_server)
    full = np.array(c.embeddings.create(model="tiny-embed", input="hello", encoding_format="float").data[0].embedding)
    raw = httpx.post(embed_server.url + "/v1/embeddings", json={"model": "tiny-embed", "input": "hello",
                                                                "encoding_format": "base64"}).json()
    decoded = np.array(struct.unpack(f"<{len(full)}f", base64.b64decode(raw["data"][0]["embedding"])))
    assert np.allclose(decoded, full, atol=1e-6)
    ids = httpx.post(embed_server.url + "/tokenize", json={"prompt": "hello"}).json()["tokens"]
    by_ids = c.embeddings.create(model="tiny-embed", input=[ids], encoding_format="float")
    assert np.allclose(by_ids.data[0].embedding, full, atol=1e-6) and by_ids.usage.prompt_tokens == len(ids)
    short = np.array(c.embeddings.create(model="tiny-embed", input="hello", dimensions=16,
                                         encoding_format="float").data[0].embedding)
    assert short.shape == (16,) and np.allclose(short, unit(full[:16]), atol=1e-6)
    legacy = ollama.Client(host=embed_server.url).embeddings(model="tiny-embed", prompt="hello").embedding
    assert np.linalg.norm(legacy) > 1.5 and float(np.dot(unit(legacy), full)) >= 0.9999  # not normalized


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"model": "tiny-embed", "input": []}),
    ("/v1/embeddings", {"model": "tiny-embed", "input": "x", "dimensions": 4096}),
    ("/v1/embeddings", {"model": "tiny-embed", "input": [[1, 999999]]}),
    ("/v1/embeddings", {"model": "tiny-embed", "input": "x", "encoding_format": "int8"}),
    ("/api/embed", {"model": "tiny-embed", "input": "x" * 3000, "truncate": False}),
])
def test_bad_input_is_a_400(embed_server, path, body):
    r = httpx.post(embed_server.url + path, json=body)
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_unknown_model_404(embed_server):
    with pytest.raises(openai.NotFoundError):
        oai(embed_server).embeddings.create(model="nope", input="x")
