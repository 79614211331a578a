"""Helpers for the browser tests (tests/web)."""
import os
import time

CHROMIUM = os.environ.get("TOKENMILL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
KEY = "web-test-key"


def wait_page(page, expression: str, timeout: float = 300.0, what: str | None = None):
    """Poll a JavaScript expression until it is truthy; returns its value. (Playwright's own
    wait_for_function evaluates a string, which the pages' CSP forbids, as it should.)"""
    deadline = time.time() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        assert time.time() < deadline, what or f"never true: {expression}"
        time.sleep(0.05)
