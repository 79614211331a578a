"""The agent protocols behind the router: Responses, Anthropic Messages and embeddings are
proxied and streamed, billed in the ledger, stored Responses stay with their tenant, and only
deterministic answers (embeddings) come from the response cache."""
import json

import anthropic
import httpx
import openai
import pytest

from router_helpers import router
from server_process import wait_for

ALICE, BOB = "alice-key", "bob-key"


def ledger(db, where):
    import sqlite3
    return sqlite3.connect(db).execute(
        f"SELECT api_key, prompt_tokens, completion_tokens, status FROM requests WHERE {where} ORDER BY ts").fetchall()


@pytest.fixture(scope="module")
def agents_router(replicas, logs):
    db = str(logs / "agents.db")
    r = router(["--backend", replicas[0].url, "--backend", replicas[1].url, "--api-key", f"alice={ALICE}",
                "--api-key", f"bob={BOB}", "--ledger", db], logs, "agents")
    yield r, db
    r.stop()


def oai(r, key):
    return openai.OpenAI(base_url=r.url + "/v1", api_key=key, max_retries=0)


def rows(db, who):
    return ledger(db, f"api_key = '{who}'")


def test_responses_billed_streamed_and_kept_per_tenant(agents_router):
    r, db = agents_router
    before = len(rows(db, "alice"))
    made = oai(r, ALICE).responses.create(model="tiny", input="Say something.", max_output_tokens=4, temperature=0)
    assert made.status == "incomplete" and made.usage.output_tokens == 4
    with oai(r, ALICE).responses.stream(model="tiny", input="Say more.", max_output_tokens=5, temperature=0) as s:
        last = list(s)[-1]  # cut by max_output_tokens: the stream ends in response.incomplete
    assert last.type == "response.incomplete"
    streamed = last.response
    assert streamed.usage.output_tokens == 5
    wait_for(lambda: len(rows(db, "alice")) >= before + 2, 60, "no ledger rows")
    billed = rows(db, "alice")[-2:]
    assert [b[1:] for b in billed] == [(made.usage.input_tokens, 4, 200), (streamed.usage.input_tokens, 5, 200)]
    # another tenant cannot see, chain from or delete it; its owner can
    with pytest.raises(openai.NotFoundError):
        oai(r, BOB).responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        oai(r, BOB).responses.create(model="tiny", input="x", previous_response_id=made.id, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oai(r, BOB).responses.delete(made.id)
    assert oai(r, ALICE).responses.retrieve(made.id).output_text == made.output_text
    chained = oai(r, ALICE).responses.create(model="tiny", input="And?", previous_response_id=made.id,
                                             max_output_tokens=2)
    assert chained.usage.input_tokens > made.usage.input_tokens
    oai(r, ALICE).responses.delete(made.id)


def test_anthropic_messages_billed(agents_router):
    r, db = agents_router
    c = anthropic.Anthropic(base_url=r.url, api_key=BOB, max_retries=0)
    before = len(rows(db, "bob"))
    m = c.messages.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    with c.messages.stream(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "Hi"}]) as s:
        final = s.get_final_message()
    assert m.usage.output_tokens == 3 and final.usage.output_tokens == 4
    n = c.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": "Hi"}]).input_tokens
    wait_for(lambda: len(rows(db, "bob")) >= before + 3, 60, "no ledger rows")
    assert [b[1:] for b in rows(db, "bob")[-3:]] == [(n, 3, 200), (n, 4, 200), (n, 0, 200)]
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=r.url, api_key="wrong", max_retries=0).messages.create(
            model="tiny", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"


def test_embeddings_cached_per_tenant(agents_router):
    r, db = agents_router
    ask = {"model": "tiny", "input": ["one", "two"]}
    first = httpx.post(r.url + "/v1/embeddings", json=ask, headers={"Authorization": f"Bearer {ALICE}"})
    again = httpx.post(r.url + "/v1/embeddings", json=ask, headers={"Authorization": f"Bearer {ALICE}"})
    other = httpx.post(r.url + "/v1/embeddings", json=ask, headers={"Authorization": f"Bearer {BOB}"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert (first.headers["x-tokenmill-cache"], again.headers["x-tokenmill-cache"],
            other.headers["x-tokenmill-cache"]) == ("miss", "hit", "miss")
    assert json.loads(again.content)["data"] == first.json()["data"] == other.json()["data"]
    ollama_embed = httpx.post(r.url + "/api/embed", json={"model": "tiny", "input": "one"},
                              headers={"Authorization": f"Bearer {ALICE}"})
    assert ollama_embed.status_code == 200 and len(ollama_embed.json()["embeddings"]) == 1
    # a Response is never served from the cache: each is its own stored object
    body = {"model": "tiny", "input": "x", "temperature": 0, "max_output_tokens": 2}
    a = httpx.post(r.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {ALICE}"})
    b = httpx.post(r.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {ALICE}"})
    assert a.headers["x-tokenmill-cache"] == b.headers["x-tokenmill-cache"] == "skip"
    assert a.json()["id"] != b.json()["id"]
