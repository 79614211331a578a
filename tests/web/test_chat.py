"""The chat page in Chromium against live servers: streaming, stop, settings, history,
export/import, sanitising, the API key, and the router."""
import json
import time

import httpx

from web_helpers import KEY, wait_page

LAST_BODY = "(() => { const b = document.querySelectorAll('#messages .msg.assistant .body'); return b.length ? b[b.length - 1].textContent : ''; })()"
LAST_STATS = "(() => { const s = document.querySelectorAll('#messages .msg.assistant .stats'); return s.length ? s[s.length - 1].textContent : ''; })()"


def done(page, n):
    """Wait until the page has ended its n-th answer."""
    wait_page(page, f"window.tmChat.finished >= {n}")


def open_chat(page, server, model):
    page.goto(server.url + "/")
    wait_page(page, f"document.querySelector('#model-name').textContent === {json.dumps(model)}")


def send(page, text):
    page.fill("#input", text)
    page.click("#send")


def test_long_answer_grows_then_stop_aborts_on_the_server(tiny_web, new_page):
    page = new_page()
    open_chat(page, tiny_web, "tiny")
    page.fill("#p-max_tokens", "1500")
    page.fill("#p-temperature", "0")
    # the page records the answer's length at every DOM change, so what is seen does not depend
    # on how fast the server streams against how often this test could poll
    page.evaluate("""(() => {
        window.__lens = [];
        new MutationObserver(() => window.__lens.push((%s).length))
            .observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
    })()""" % LAST_BODY)
    send(page, "Tell me a long story.")
    done(page, 1)
    seen = list(dict.fromkeys(page.evaluate("window.__lens")))
    final = len(page.evaluate(LAST_BODY))
    growing = [n for n in seen if 0 < n < final]
    assert len(growing) >= 2, f"the answer was not seen growing: {seen} then {final}"
    assert "1500 tokens" in page.evaluate(LAST_STATS) and "finish: length" in page.evaluate(LAST_STATS)

    # no max_tokens: this answer would run to the end of the 8k context; Stop must end it
    page.fill("#p-max_tokens", "")
    send(page, "Go on.")
    wait_page(page, f"({LAST_BODY}).length > 20")
    assert tiny_web.metric("tokenmill:num_requests_running") == 1
    page.click("#stop")
    done(page, 2)
    deadline = time.time() + 120
    while tiny_web.metric("tokenmill:num_requests_running") != 0:
        assert time.time() < deadline, "the server kept generating after Stop"
        time.sleep(0.05)
    assert "finish: stopped" in page.evaluate(LAST_STATS)


def greedy(server, messages, max_tokens):
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"model": server.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    return r.json()["choices"][0]["message"]["content"]


def test_key_settings_history_continue_export_import(smol_web, new_page, tmp_path):
    page = new_page(allow=["401"])  # the first load, before the key is given, is refused
    page.goto(smol_web.url + "/")
    wait_page(page, "document.querySelector('#error').textContent.includes('401')")  # no key yet
    page.once("dialog", lambda d: d.accept(KEY))
    page.click("#api-key-button")  # reloads with the key kept in this browser
    wait_page(page, f"document.querySelector('#model-name').textContent === {json.dumps(smol_web.model)}")

    # sampling settings reach the request: greedy, 5 tokens, exactly what the API gives
    page.fill("#p-temperature", "0")
    page.fill("#p-max_tokens", "5")
    question = "What is the capital of France?"
    send(page, question)
    done(page, 1)
    expected = greedy(smol_web, [{"role": "user", "content": question}], 5)
    assert page.evaluate(LAST_BODY).strip() == expected.strip()
    stats = page.evaluate(LAST_STATS)
    assert "5 tokens" in stats and "finish: length" in stats and "TTFT" in stats and "tok/s" in stats

    # cut by its length: Continue goes on with the same answer
    page.click("#continue")
    done(page, 2)
    continued = page.evaluate(LAST_BODY)
    assert continued.startswith(expected.strip()[:10]) and len(continued) > len(expected)
    assert "10 tokens" in page.evaluate(LAST_STATS) or "finish: stop" in page.evaluate(LAST_STATS)

    # regenerate (greedy: the same 5 tokens again), then edit the last turn
    page.fill("#p-max_tokens", "5")
    page.click("#regenerate")
    done(page, 3)
    assert page.evaluate(LAST_BODY).strip() == expected.strip()
    assert page.evaluate("document.querySelectorAll('#messages .msg').length") == 2
    page.click("#edit-last")
    assert page.input_value("#input") == question
    assert page.evaluate("document.querySelectorAll('#messages .msg').length") == 0
    send(page, question)
    done(page, 4)

    # history survives a reload, settings too
    page.reload()
    wait_page(page, f"({LAST_BODY}).trim() === {json.dumps(expected.strip())}")
    assert page.input_value("#p-temperature") == "0"
    assert page.evaluate("document.querySelector('#conversations li .title').textContent").startswith("What is")

    # export, then import into a browser that has never seen it
    with page.expect_download() as dl:
        page.click("#export")
    path = tmp_path / "export.json"
    dl.value.save_as(path)
    data = json.loads(path.read_text())
    assert data["conversations"][0]["messages"][0]["content"] == question
    data["conversations"].append({"id": "code", "title": "code sample", "messages": [
        {"role": "user", "content": "code?"},
        {"role": "assistant", "content": "Here:\n\n```python\nprint('hi')\n```\n"}]})
    path.write_text(json.dumps(data))
    other = new_page(api_key=KEY)
    open_chat(other, smol_web, smol_web.model)
    other.set_input_files("#import", str(path))
    wait_page(other, "document.querySelectorAll('#conversations li').length === 2")
    other.click("#conversations li:nth-child(1)")  # imported newest first: the code sample
    wait_page(other, "document.querySelector('#messages pre button.copy') !== null")
    assert other.evaluate("document.querySelector('#messages pre code').textContent").strip() == "print('hi')"


def test_model_html_stays_inert(smol_web, new_page):
    prompt = 'Repeat this HTML exactly, nothing else: <script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    answer = greedy(smol_web, [{"role": "user", "content": prompt}], 80)
    assert "<script>" in answer and "onerror" in answer  # the real model really writes them
    page = new_page(api_key=KEY)
    open_chat(page, smol_web, smol_web.model)
    page.fill("#p-temperature", "0")
    page.fill("#p-max_tokens", "80")
    send(page, prompt)
    done(page, 1)
    assert "<script>window.pwned=1</script>" in page.evaluate(LAST_BODY)  # shown as text
    assert page.evaluate("document.querySelectorAll('#messages script, #messages img, #messages [onerror]').length") == 0
    assert page.evaluate("typeof window.pwned") == "undefined"


def test_chat_through_the_router(routed, new_page):
    r, small, large = routed
    page = new_page(api_key="user-key")
    open_chat(page, r, "auto")
    page.fill("#p-max_tokens", "12")
    send(page, "Hello")
    done(page, 1)
    assert "12 tokens" in page.evaluate(LAST_STATS)
    assert page.evaluate("document.querySelector('#ctx-text').textContent").endswith("/ 8192 tokens")


def test_a_first_chat_starts_from_the_recommended_sampling_and_sends_what_it_shows(smol_web, new_page):
    page = new_page(api_key=KEY)
    open_chat(page, smol_web, smol_web.model)
    wait_page(page, "document.querySelector('#p-temperature').value === '0.3'")
    shown = {p: page.input_value(f"#p-{p}") for p in ("temperature", "top_k", "top_p", "min_p")}
    assert shown == {"temperature": "0.3", "top_k": "40", "top_p": "0.95", "min_p": "0.05"}
    assert "bench/first_chat.py" in page.text_content("#sampling-source")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req:
        page.fill("#p-max_tokens", "4")
        send(page, "Hello")
    body = json.loads(req.value.post_data)
    assert {k: body[k] for k in shown} == {"temperature": 0.3, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
    done(page, 1)
    # a user's own value stays, and Reset brings the recommended ones back
    page.fill("#p-temperature", "0.9")
    page.press("#p-temperature", "Tab")  # a change is saved when the field is left
    page.reload()
    wait_page(page, "document.querySelector('#p-top_k').value === '40'")
    assert page.input_value("#p-temperature") == "0.9"
    page.click("#reset-settings")
    assert page.input_value("#p-temperature") == "0.3"


def test_a_thinking_models_reasoning_is_folded_above_its_answer(thinking_server, new_page):
    from thinking_model import ANSWER, REASONING
    page = new_page()
    open_chat(page, thinking_server, "thinker")
    page.fill("#p-temperature", "0")
    send(page, "Is it?")
    done(page, 1)
    assert page.evaluate(LAST_BODY).strip() == ANSWER
    folded = page.evaluate("""(() => { const d = document.querySelector('#messages .msg.assistant details.reasoning');
        return d && {open: d.open, text: d.querySelector('.thought').textContent,
                     above: !!(d.compareDocumentPosition(d.parentElement.querySelector('.body')) & Node.DOCUMENT_POSITION_FOLLOWING)}; })()""")
    assert folded == {"open": False, "text": REASONING, "above": True}
    # reloaded from storage, the reasoning is still there, and only the answer goes back to the model
    page.reload()
    wait_page(page, "document.querySelector('#messages .msg.assistant details.reasoning .thought')")
    assert page.evaluate("document.querySelector('#messages details.reasoning .thought').textContent") == REASONING


def test_settings_changed_before_the_server_answers_are_kept(tiny_web, new_page):
    """The settings fields keep what is typed from the first moment, even while /tokenmill/info
    (held back here) has not answered yet."""
    page = new_page()
    held = []
    page.route("**/tokenmill/info*", lambda route: held.append(route))
    page.goto(tiny_web.url + "/")
    wait_page(page, "document.querySelector('#model-name').textContent === 'tiny'")
    page.fill("#p-temperature", "0.25")
    page.focus("#input")  # the change is committed when the field loses focus
    wait_page(page, "JSON.parse(localStorage.getItem('tokenmill.chatSettings') || '{}')['temperature'] === '0.25'",
              timeout=30, what="the setting was not saved before the server answered")
    for route in held:
        route.continue_()


def test_the_model_picker_sends_to_the_picked_model(store, new_page):
    """A server with a store: the page lists its models, and the one picked answers (loaded on
    demand) and is remembered."""
    bundled = httpx.get(store.url + "/v1/models").json()["data"][0]["id"]
    page = new_page()
    open_chat(page, store, bundled)
    options = page.eval_on_selector_all("#model-pick option", "os => os.map((o) => o.value)")
    assert {bundled, "smollm2-q8_0", "tiny-qwen2"} <= set(options) and page.is_visible("#model-pick")
    before = store.metric("tokenmill:request_success_total", label='model_name="tiny-qwen2"')
    page.select_option("#model-pick", "tiny-qwen2")
    wait_page(page, "document.querySelector('#model-name').textContent === 'tiny-qwen2'")
    page.fill("#p-max_tokens", "3")
    send(page, "Hi")
    done(page, 1)
    assert store.metric("tokenmill:request_success_total", label='model_name="tiny-qwen2"') == before + 1
    page.reload()
    wait_page(page, "document.querySelector('#model-name').textContent === 'tiny-qwen2'")
