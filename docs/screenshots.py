"""Takes docs/chat.png, docs/dashboard.png and docs/explain.png: a real `tokenmill serve` on the
bundled model, driven by Debian's Chromium. Run: python docs/screenshots.py"""
import concurrent.futures as cf
import os
import sys
import time

import httpx
from playwright.sync_api import sync_playwright

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from server_process import Server  # noqa: E402
from web_helpers import ARGS, CHROMIUM, wait_page  # noqa: E402


def main():
    server = Server(["--price", "0.5,1.5"], "/tmp/tokenmill-screenshots.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})

            # some traffic first, so that the dashboard has something to show
            def one(i):
                httpx.post(server.url + "/v1/chat/completions", timeout=300, json={
                    "model": server.model, "max_tokens": 40 + 10 * (i % 5), "temperature": 0.7,
                    "messages": [{"role": "user", "content": f"Give me fact number {i} about the sea."}]})
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(24)))

            page.goto(server.url + "/")
            wait_page(page, "document.querySelector('#model-name').textContent.length > 3")
            page.fill("#p-temperature", "0")
            page.fill("#input", "Write a Python function that returns the sum of a list, in a code block.")
            page.click("#send")
            wait_page(page, "window.tmChat.finished >= 1")
            page.screenshot(path=os.path.join(HERE, "chat.png"))

            page.goto(server.url + "/explain")
            page.fill("#g-max_tokens", "12")
            page.click("#run")
            wait_page(page, "document.querySelectorAll('#candidates tbody tr').length > 0")
            page.click("#answer-tokens .tok[data-step='2']")
            page.screenshot(path=os.path.join(HERE, "explain.png"))

            page.goto(server.url + "/dashboard")
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(16)))
            time.sleep(3)
            page.screenshot(path=os.path.join(HERE, "dashboard.png"))
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
