"""Load spreading, failover when a replica dies mid-burst, readmission when it returns."""
import concurrent.futures as cf
import time

import httpx
import openai

from router_helpers import backend_requests, replica, router

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
        "temperature": 0.7}


def burst(url, n, body=BODY):
    with cf.ThreadPoolExecutor(n) as pool:
        futs = [pool.submit(httpx.post, url + "/v1/chat/completions", json=dict(body, seed=None), timeout=60)
                for _ in range(n)]
        return [f.result() for f in futs]


def test_load_is_spread(replicas, logs):
    r = router([a for s in replicas for a in ("--backend", s.url)] + ["--ledger", str(logs / "spread.db")],
               logs, "spread")
    try:
        before = [backend_requests(s) for s in replicas]
        results = burst(r.url, 18)
        assert all(x.status_code == 200 for x in results)
        after = [backend_requests(s) for s in replicas]
        got = [a - b for a, b in zip(after, before)]
        assert sum(got) == 18 and all(g >= 3 for g in got), got
        # streaming passes through: the streamed text is the whole answer (how many chunks it
        # comes in depends on how fast the client reads, so that is not asserted)
        c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0)
        kw = dict(model="tiny", messages=BODY["messages"], max_tokens=8, temperature=0)
        chunks = list(c.chat.completions.create(stream=True, **kw))
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert streamed and streamed == c.chat.completions.create(**kw).choices[0].message.content
        assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None
    finally:
        r.stop()


def test_round_robin_and_affinity_policies(replicas, logs):
    for policy in ("round_robin", "prefix_affinity"):
        r = router([a for s in replicas for a in ("--backend", s.url)] +
                   ["--policy", policy, "--ledger", str(logs / f"{policy}.db"), "--no-cache"], logs, policy)
        try:
            before = [backend_requests(s) for s in replicas]
            shared = {"role": "system", "content": "You are a careful assistant. " * 30}
            for i in range(6):
                body = dict(BODY, messages=[shared, {"role": "user", "content": f"q{i}"}])
                assert httpx.post(r.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
            got = [backend_requests(s) - b for s, b in zip(replicas, before)]
            if policy == "round_robin":
                assert got == [2, 2, 2], got
            else:  # one after another, same long prefix: always the same replica
                assert sorted(got) == [0, 0, 6], got
        finally:
            r.stop()


def test_replica_killed_mid_burst_fails_no_request(tiny_router_model, logs):
    rs = [replica(tiny_router_model, logs, name="tiny") for _ in range(3)]
    r = router([a for s in rs for a in ("--backend", s.url)] + ["--ledger", str(logs / "failover.db")],
               logs, "failover")
    try:
        body = dict(BODY, max_tokens=1500, ignore_eos=True)  # long enough to be in flight
        with cf.ThreadPoolExecutor(24) as pool:
            futs = [pool.submit(httpx.post, r.url + "/v1/chat/completions", json=body, timeout=300)
                    for _ in range(24)]
            victim = rs[1]
            deadline = time.time() + 30
            while victim.metric("tokenmill:num_requests_running") < 2:  # it has work in flight
                assert time.time() < deadline, "the burst never reached the victim"
                time.sleep(0.05)
            victim.kill()
            results = [f.result() for f in futs]
        assert [x.status_code for x in results] == [200] * 24
        assert all(x.json()["usage"]["completion_tokens"] == 1500 for x in results)
        assert r.metric("tokenmill_router:retries_total") >= 1
        assert r.metric("tokenmill_router:backend_healthy", label=victim.url) == 0
        # it comes back on the same port and is readmitted
        back = replica(tiny_router_model, logs, name="tiny", port=victim.port)
        rs[1] = back
        deadline = time.time() + 20
        while r.metric("tokenmill_router:backend_healthy", label=back.url) != 1:
            assert time.time() < deadline, "the restarted replica was not readmitted"
            time.sleep(0.2)
        before = backend_requests(back)
        burst(r.url, 9)
        assert backend_requests(back) > before
    finally:
        r.stop()
        for s in rs:
            s.stop()
