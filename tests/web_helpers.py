"""Helpers for the browser tests (tests/web)."""
import os
import time

from playwright.sync_api import Error as PlaywrightError

CHROMIUM = os.environ.get("TOKENMILL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
KEY = "web-test-key"


def wait_page(page, expression: str, timeout: float = 300.0, what: str | None = None):
    """Poll a JavaScript expression until it is truthy; returns its value. (Playwright's own
    wait_for_function evaluates a string, which the pages' CSP forbids, as it should.)

    While a page reloads, its new document may not have the element yet (the expression throws)
    or the old document's context goes away mid-call; both count as "not yet", and the last such
    error is in the message if the deadline passes."""
    deadline = time.time() + timeout
    guarded = f"(() => {{ try {{ return {{value: ({expression})}}; }} catch (e) {{ return {{error: String(e)}}; }} }})()"
    last_error = None
    while True:
        try:
            result = page.evaluate(guarded)
        except PlaywrightError as e:  # the document navigated away during the call
            result = {"error": str(e)}
        if result.get("value"):
            return result["value"]
        last_error = result.get("error", last_error)
        assert time.time() < deadline, (what or f"never true: {expression}") + (
            f" (last error: {last_error})" if last_error else "")
        time.sleep(0.05)
