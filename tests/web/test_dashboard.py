"""The live dashboard in Chromium: after a burst of requests its next pushes agree with
/metrics (counters exactly, percentiles inside the histogram's buckets); the router's
dashboard shows both backends, the routing split and, for an admin key only, cost by key."""
import concurrent.futures as cf
import math

import httpx

from web_helpers import wait_page

LATEST = "window.tmDashboard.latest"


def scrape(url, headers=None) -> dict:
    """{sample name with labels: value} from /metrics."""
    out = {}
    for line in httpx.get(url + "/metrics", headers=headers or {}).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def summed(samples: dict, name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def bucket_bounds(samples: dict, histogram: str, q: float) -> tuple[float, float]:
    """The (lower, upper] bucket bounds that hold the q-quantile, from the cumulative buckets."""
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in samples.items()
                     if k.startswith(histogram + "_bucket{"))
    total = buckets[-1][1]
    rank = math.ceil(q * total)
    lower = 0.0
    for le, count in buckets:
        if count >= rank:
            return lower, le
        lower = le
    raise AssertionError("no bucket holds the quantile")


def burst(server, n=24):
    def one(i):
        body = {"model": server.model, "prompt": f"burst {i}", "max_tokens": 4 + i % 9, "temperature": 0,
                "stream": i % 2 == 0}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def test_server_dashboard_agrees_with_metrics(tiny_web, new_page):
    page = new_page()
    page.goto(tiny_web.url + "/dashboard")
    wait_page(page, f"{LATEST} !== null")  # the live stream is flowing
    httpx.post(tiny_web.url + "/v1/completions", json={"model": "nope", "prompt": "x"})  # one 404
    burst(tiny_web)
    metrics = scrape(tiny_web.url)
    want = {name: summed(metrics, name) for name in (
        "tokenmill:request_success_total", "tokenmill:prompt_tokens_total", "tokenmill:generation_tokens_total",
        "tokenmill:e2e_request_latency_seconds_count", "tokenmill:time_to_first_token_seconds_count",
        "tokenmill:cost_dollars_total")}
    assert want["tokenmill:request_success_total"] >= 24
    # the next pushes show the burst: every counter equal to what /metrics says
    checks = " && ".join(f"{LATEST}.detail.totals[{name!r}] === {value!r}" for name, value in want.items())
    wait_page(page, checks, what=f"dashboard never matched /metrics: {want}")
    latest = page.evaluate(LATEST)
    s = latest["series"]
    assert s["window_requests"] == want["tokenmill:e2e_request_latency_seconds_count"]
    assert s["responses_4xx"] >= 1
    for key, hist in (("ttft", "tokenmill:time_to_first_token_seconds"), ("e2e", "tokenmill:e2e_request_latency_seconds")):
        for q in (0.5, 0.95):
            lo, hi = bucket_bounds(metrics, hist, q)
            value = s[f"{key}_p{round(q * 100)}"]
            assert lo < value <= hi, f"{key} p{q}: {value} outside ({lo}, {hi}]"
    assert s["cost_per_request"] > 0 and s["rss_mb"] > 50
    shown = page.evaluate("document.querySelector('#tile-requests_total').dataset.value")
    assert float(shown) == want["tokenmill:request_success_total"]
    assert page.evaluate("document.querySelectorAll('#charts .uplot').length") >= 4
    assert page.evaluate("document.querySelector('#estimate') !== null")  # tokenmill estimate's figures

    # a page opened now starts with history, not an empty chart
    fresh = new_page()
    fresh.goto(tiny_web.url + "/dashboard")
    wait_page(fresh, "window.tmDashboard.hello !== null && window.tmDashboard.history.length >= 3")


def test_router_dashboard_backends_split_and_cost_by_key(routed, new_page):
    r, small, large = routed
    user = {"Authorization": "Bearer user-key"}
    for i in range(3):
        for model in ("small", "large"):
            resp = httpx.post(r.url + "/v1/chat/completions", headers=user, timeout=120, json={
                "model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 4})
            assert resp.status_code == 200
    admin = new_page(api_key="admin-key")
    admin.goto(r.url + "/dashboard")
    wait_page(admin, "document.querySelectorAll('#backends tbody tr').length === 2")
    text = admin.evaluate("document.querySelector('#backends').textContent")
    assert small.url in text and large.url in text and text.count("healthy") == 2
    wait_page(admin, f"{LATEST} && {LATEST}.detail.routes.every(x => x.forced >= 3)")
    routes = {x["route"]: x for x in admin.evaluate(f"{LATEST}.detail.routes")}
    assert set(routes) == {"small", "large"}
    assert routes["small"]["share"] > 0 and routes["large"]["share"] > 0
    wait_page(admin, "document.querySelectorAll('#routing tbody tr').length === 2")
    wait_page(admin, "document.querySelector('#cost-key table') !== null && "
                     "document.querySelector('#cost-key').textContent.includes('user')")
    # the ledger is written by its own thread and read every few seconds: wait for all six rows
    wait_page(admin, f"['small', 'large'].every(g => {LATEST}.detail.cost_by_route.some("
                     "x => x.group === g && x.requests >= 3))")
    by_route = {x["group"]: x for x in admin.evaluate(f"{LATEST}.detail.cost_by_route")}
    assert by_route["large"]["cost"] > by_route["small"]["cost"] > 0  # large is priced higher

    tenant = new_page(api_key="user-key")
    tenant.goto(r.url + "/dashboard")
    wait_page(tenant, f"{LATEST} !== null")
    assert tenant.evaluate(f"{LATEST}.detail.cost_by_key") is None
    assert tenant.evaluate("document.querySelector('#cost-key table')") is None


def test_the_dashboard_lists_the_loaded_models(store, new_page):
    """A store: the Loaded models table shows each loaded model with its memory."""
    from store.conftest import loaded
    httpx.post(store.url + "/api/generate", json={"model": "tiny-qwen2", "keep_alive": "10m"}, timeout=300)
    page = new_page()
    page.goto(store.url + "/dashboard")
    want = loaded(store)
    wait_page(page, "document.querySelectorAll('#models tbody tr').length === %d" % len(want))
    rows = page.eval_on_selector_all("#models tbody tr", "rs => rs.map((r) => [...r.cells].map((c) => c.textContent))")
    assert {r[0] for r in rows} == want
    tiny = next(r for r in rows if r[0] == "tiny-qwen2")
    assert tiny[1].endswith("MiB") and tiny[6].endswith(" s")  # memory; unloads in ~10 minutes
