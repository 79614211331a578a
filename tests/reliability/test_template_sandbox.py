"""A GGUF's chat template is code from a downloaded file. One that tries to escape the Jinja
sandbox (CVE-2024-34359 style) is refused with a 400 and runs nothing: the marker file it tries
to create never appears. One that loops for ever or writes a huge prompt is stopped too."""
import os

import httpx
import pytest

from server_process import Server

ESCAPES = [
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch {marker}') }}{% endif %}{% endfor %}",
    "{{ lipsum.__globals__['os'].system('touch {marker}') }}",
]
HOG = ("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"
       "{{ messages[0]['content'] }}")
HUGE = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"


def server_with_template(tmp_path, template, name):
    import torch
    from tiny_models import make_hf_model, save_gguf
    model = make_hf_model("llama", seed=3)
    with torch.no_grad():
        path = save_gguf(model, str(tmp_path / f"{name}.gguf"), chat_template=template)
    return Server(["--model", path, "--served-model-name", "evil", "--kv-cache-memory-gib", "0.01"],
                  str(tmp_path / f"{name}.log"))


@pytest.mark.parametrize("i", range(len(ESCAPES)))
def test_sandbox_escape_is_refused_and_runs_nothing(tmp_path, i):
    marker = tmp_path / "pwned"
    s = server_with_template(tmp_path, ESCAPES[i].replace("{marker}", str(marker)), f"escape{i}")
    try:
        body = {"model": "evil", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/api/chat", json={"model": "evil", "messages": body["messages"]}, timeout=60)
        assert r.status_code == 400
        assert not os.path.exists(marker)
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def test_template_time_and_size_limits(tmp_path):
    for name, template, needle in (("hog", HOG, "longer than"), ("huge", HUGE, "more than")):
        s = server_with_template(tmp_path, template, name)
        try:
            body = {"model": "evil", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
            # the server is not stuck behind it
            r = httpx.post(s.url + "/v1/completions", json={"model": "evil", "prompt": "a", "max_tokens": 2},
                           timeout=60)
            assert r.status_code == 200
        finally:
            s.stop()
