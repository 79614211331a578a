"""The pages and their JSON endpoints over plain HTTP: CSP on every page, assets from the
package, pages open without the API key while everything they call needs it, bad explorer
input gets a 400 that says why."""
import httpx
import pytest

from web_helpers import KEY

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize("path", ["/", "/dashboard", "/explain"])
def test_pages_open_without_a_key_and_carry_a_csp(smol_web, path):
    r = httpx.get(smol_web.url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert "http" not in r.text.replace("http-equiv", "")  # no absolute URL: nothing from elsewhere
    assert httpx.head(smol_web.url + path).status_code == 200


def test_assets_and_what_stays_locked(smol_web):
    assert httpx.get(smol_web.url + "/static/vendor/purify.min.js").headers["content-type"].startswith("text/javascript")
    # normalised to /pyproject.toml: not a page, so the key is asked for; with it, not found
    assert httpx.get(smol_web.url + "/static/../pyproject.toml").status_code == 401
    assert httpx.get(smol_web.url + "/static/../pyproject.toml", headers=AUTH).status_code == 404
    assert httpx.get(smol_web.url + "/static/%2e%2e/__init__.py").status_code == 404
    assert httpx.get(smol_web.url + "/static/nope.js").status_code == 404
    assert httpx.get(smol_web.url + "/tokenmill/dashboard").status_code == 401
    assert httpx.post(smol_web.url + "/tokenmill/explain", json={"prompt": "x"}).status_code == 401
    assert httpx.post(smol_web.url + "/", json={"inputs": "x"}).status_code == 401  # TGI stays locked
    info = httpx.get(smol_web.url + "/tokenmill/info", headers=AUTH).json()
    assert info["max_model_len"] == 8192 and info["price"] == {"in": 0.5, "out": 1.5}


@pytest.mark.parametrize("body, why", [
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
    ({}, "exactly one"),
    ({"prompt_token_ids": [1, 2], "output_token_ids": [3], "max_tokens": 2}, "max_tokens"),
    ({"prompt_token_ids": [10**9]}, "token ids"),
    ({"prompt": "a", "top_n": 1000}, "top_n"),
    ({"prompt": "a", "max_tokens": 100000}, "max_tokens"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "model": "other"}, "does not exist"),
])
def test_explain_bad_input(tiny_web, body, why):
    r = httpx.post(tiny_web.url + "/tokenmill/explain", json=body)
    assert r.status_code in (400, 404), r.text
    assert why in r.text


def test_explain_json_for_programs(tiny_web):
    r = httpx.post(tiny_web.url + "/tokenmill/explain", json={"prompt": "hello", "max_tokens": 3, "temperature": 0,
                                                              "top_n": 4}).json()
    assert [t["id"] for t in r["prompt"]["tokens"]][:1] and len(r["steps"]) == 3
    for step in r["steps"]:
        assert step["kept"] == 1 and step["candidates"][0]["id"] == step["token"]["id"]
        assert step["candidates"][0]["p_filtered"] == 1.0
    assert r["text"] == "".join(s["token"]["text"] for s in r["steps"])
