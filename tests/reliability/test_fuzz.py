"""schemathesis against the live server's /openapi.json: generated bodies for every route,
with the served model name filled in so that cases reach the handlers. No 5xx, responses as
documented, every stream ends in its protocol's terminator or an error event, no traceback
in the server log. At least 2,000 cases (TOKENMILL_RELIABILITY_LONG=1: 10x as many)."""
import json

import httpx

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from .conftest import LONG, tracebacks

CASES_PER_OPERATION = 2500 if LONG else 120
MIN_CASES = 20000 if LONG else 2000
stats = {"cases": 0, "streams": 0, "server_errors": 0}


def stream_terminated(ctx, response, case):
    """A streamed answer ends in [DONE] / done: true / a final event (message_stop,
    response.completed...), or an error event."""
    kind = response.headers.get("content-type", [""])
    kind = kind[0] if isinstance(kind, list) else kind
    if response.status_code != 200 or not any(t in kind for t in ("text/event-stream", "ndjson")):
        return None
    stats["streams"] += 1
    text = response.text
    if "event-stream" in kind:
        # schemathesis reads only the first events of an SSE stream: read the whole answer again
        kw = case.as_transport_kwargs(base_url=stats["url"])
        body = kw.get("json")
        r = httpx.request(kw["method"], kw["url"], headers=kw.get("headers"), params=kw.get("params"),
                          timeout=120, **({"json": body} if body is not None else {"content": kw.get("data")}))
        text = r.text
    lines = [ln for ln in text.split("\n") if ln.strip()]  # SSE and NDJSON split on \n only
    assert lines, "an empty stream"
    last = lines[-1]
    if "ndjson" in kind:
        event = json.loads(last)
        assert event.get("done") is True or "error" in event, f"NDJSON stream ended without done: {last[:200]}"
        return True
    data = last[5:].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    if event.get("type") in ("message_stop", "response.completed", "response.incomplete", "response.failed", "error"):
        return True  # Anthropic's and the Responses API's named-event streams
    assert "error" in event or event.get("details") is not None or event.get("generated_text") is not None, \
        f"SSE stream ended without a terminator: {last[:200]}"
    return True


def test_openapi_fuzz(fuzz_server):
    """Every operation in turn, CASES_PER_OPERATION generated cases each (fewer where the
    operation has few inputs). Failures are collected, not shrunk, and reported together."""
    api = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    stats["url"] = fuzz_server.url
    failures = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case):
            body = case.body
            if isinstance(body, dict) and "model" in body and stats["cases"] % 10:
                body["model"] = fuzz_server.model  # 9 in 10 reach the handler
            stats["cases"] += 1
            try:
                case.call_and_validate(checks=[not_a_server_error, response_schema_conformance,
                                               stream_terminated], timeout=120)
            except (Exception, BaseExceptionGroup) as e:  # every kind of check failure is collected
                stats["server_errors"] += 1
                if len(failures) < 20:
                    failures.append(f"{operation.label}: {str(e)[:1500]}")

        run()
    print(f"\nfuzz: {stats['cases']} cases over the OpenAPI document, {stats['streams']} streams checked, "
          f"{stats['server_errors']} failures")
    assert failures == []
    assert stats["cases"] >= MIN_CASES
    assert tracebacks(fuzz_server.log_path) == []
