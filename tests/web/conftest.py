"""The pages in a real browser: Debian's Chromium driven by Playwright, one browser for the
whole session, a fresh context (storage) per test. Every request that leaves loopback is
blocked and recorded (the pages must need nothing from the network), and every console
error or uncaught exception fails the test that caused it."""
import os
import shutil
from urllib.parse import urlparse

import pytest

from router_helpers import replica, router
from server_process import Server

from web_helpers import ARGS, CHROMIUM, KEY


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watch:
    """What a page did that it must not: console errors, exceptions, requests off loopback."""

    def __init__(self):
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.allowed: list[str] = []   # console errors a test provokes on purpose (e.g. "401")

    def attach(self, context):
        def route(r):
            host = urlparse(r.request.url).hostname
            if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
                return r.continue_()
            self.blocked.append(r.request.url)
            return r.abort()
        context.route("**/*", route)

    def page(self, page):
        def console(m):
            if m.type == "error" and not any(a in m.text for a in self.allowed):
                self.errors.append(f"console {m.type}: {m.text}")
        page.on("console", console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        return page


@pytest.fixture
def new_page(browser):
    """new_page(api_key=None) -> a page in a fresh context; checked for errors at the end."""
    contexts, watch = [], Watch()

    def make(api_key: str | None = None, viewport=(1280, 800), allow=()):
        watch.allowed.extend(allow)
        ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
        watch.attach(ctx)
        if api_key:
            ctx.add_init_script(f"localStorage.setItem('tokenmill.apiKey', {api_key!r})")
        contexts.append(ctx)
        return watch.page(ctx.new_page())
    yield make
    for c in contexts:
        c.close()
    assert not watch.blocked, f"pages asked the network for: {watch.blocked}"
    assert not watch.errors, "\n".join(watch.errors)


@pytest.fixture(scope="session")
def web_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("web-logs")


@pytest.fixture(scope="session")
def smol_web(web_logs):
    """The bundled SmolLM2 behind an API key, with prices, percentiles over an hour."""
    s = Server(["--api-key", KEY, "--price", "0.5,1.5", "--dashboard-window-s", "3600"],
               str(web_logs / "smol-web.log"))
    s.model = "SmolLM2-135M-Instruct.Q4_1"
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_web(tiny_server_model, web_logs):
    """A tiny random model that never stops by itself (long answers, stop button)."""
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.05",
                "--dashboard-window-s", "3600", "--price", "1,2"], str(web_logs / "tiny-web.log"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def routed(tiny_server_model, web_logs):
    """Two tiny replicas as routes small and large behind a router with a user and an admin key."""
    small, large = replica(tiny_server_model, web_logs, "small"), replica(tiny_server_model, web_logs, "large")
    r = router(["--route", f"small={small.url}", "--route", f"large={large.url}", "--price", "small=0.1,0.2",
                "--price", "large=3,6", "--api-key", "user=user-key", "--admin-key", "admin-key",
                "--ledger", str(web_logs / "ledger.sqlite"), "--no-cache"], web_logs, "web")
    yield r, small, large
    r.stop()
    small.stop()
    large.stop()
