"""The token explorer in Chromium on the real model: raw probabilities are exp(logprob) of
what /v1/completions reports, top_k=2 leaves two candidates summing to 1, and a seeded run
(and a re-run of one of its steps) picks the tokens /v1/completions picks with that seed."""
import math

import httpx

from web_helpers import KEY, wait_page

AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS = """[...document.querySelectorAll('#candidates tbody tr')].map(r => ({id: +r.dataset.id,
    raw: +r.dataset.pRaw, final: +r.dataset.pFinal}))"""


def set_slider(page, name, value):
    page.evaluate(f"(() => {{ const s = document.querySelector('#s-{name}'); s.value = {value!r}; "
                  "s.dispatchEvent(new Event('input', {bubbles: true})); })()")


def test_explorer_matches_the_api(smol_web, new_page):
    page = new_page(api_key=KEY)
    page.goto(smol_web.url + "/explain")
    page.fill("#text", "What is the capital of France?")
    page.fill("#g-temperature", "1")
    page.fill("#g-seed", "3")
    page.fill("#g-max_tokens", "8")
    page.click("#run")
    wait_page(page, "window.tmExplain.result !== null && document.querySelectorAll('#candidates tbody tr').length > 0")
    result = page.evaluate("window.tmExplain.result")
    prompt_ids = [t["id"] for t in result["prompt"]["tokens"]]
    assert result["prompt"]["tokens"][0]["special"] and result["prompt"]["text"].startswith("<|im_start|>")

    # raw probabilities = exp(logprob) of the API's top logprobs for the first step
    api = httpx.post(smol_web.url + "/v1/completions", headers=AUTH, timeout=120, json={
        "model": smol_web.model, "prompt": prompt_ids, "max_tokens": 1, "temperature": 0, "logprobs": 5}).json()
    top = api["choices"][0]["logprobs"]["top_logprobs"][0]
    rows = page.evaluate(ROWS)
    text_of = {c["id"]: c["text"] for c in result["steps"][0]["candidates"]}
    for row in sorted(rows, key=lambda r: -r["raw"])[:5]:
        assert abs(row["raw"] - math.exp(top[text_of[row["id"]]])) < 1e-4

    # seeded: the same tokens /v1/completions samples with that seed
    sampled = httpx.post(smol_web.url + "/v1/completions", headers=AUTH, timeout=120, json={
        "model": smol_web.model, "prompt": prompt_ids, "max_tokens": 8, "temperature": 1, "seed": 3,
        "logprobs": 0}).json()["choices"][0]
    assert [s["token"]["text"] for s in result["steps"]] == sampled["logprobs"]["tokens"]

    # a step re-run with the same settings draws the same token again
    page.click("#answer-tokens .tok[data-step='3']")
    set_slider(page, "temperature", "1")
    wait_page(page, "window.tmExplain.rerun !== null")
    assert page.evaluate("window.tmExplain.rerun.token.id") == result["steps"][3]["token"]["id"]

    # top_k = 2: exactly two candidates left, their probabilities sum to 1
    set_slider(page, "top_k", "2")
    wait_page(page, "window.tmExplain.rerun && window.tmExplain.rerun.kept === 2")
    wait_page(page, f"({ROWS}).filter(r => r.final > 0).length === 2")
    kept = [r["final"] for r in page.evaluate(ROWS) if r["final"] > 0]
    assert abs(sum(kept) - 1) < 1e-4


def test_explain_is_bounded_in_memory(smol_web):
    """Each step keeps a vocabulary-wide logits row: 32 MiB a request at most (170 steps of
    SmolLM2's 49,152), asked for more it is a 400 that says the limit."""
    r = httpx.post(smol_web.url + "/tokenmill/explain", headers=AUTH, timeout=120,
                   json={"prompt": "Hi", "max_tokens": 200})
    assert r.status_code == 400 and "at most 170" in r.json()["error"]["message"]
    ok = httpx.post(smol_web.url + "/tokenmill/explain", headers=AUTH, timeout=120,
                    json={"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and len(ok.json()["steps"]) == 2
