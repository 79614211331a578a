"""The recommended sampling: a model's generation_config.json, a GGUF's general.sampling keys,
else our defaults; serve --default-sampling parsed strictly; the OpenAI routes use it only
with --generation-config auto."""
import json

import pytest

from tokenmill.model.loader.sampling_defaults import DEFAULTS, parse, recommended


def test_generation_config_wins_in_a_hf_directory(tiny_llama_dir, tmp_path):
    import shutil
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    assert recommended(str(d)) == (DEFAULTS, "tokenmill defaults (bench/first_chat.py)")
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20,
                                                          "do_sample": True, "eos_token_id": 2}))
    assert recommended(str(d)) == ({"temperature": 0.6, "top_p": 0.95, "top_k": 20}, "generation_config.json")


def test_a_gguf_without_sampling_keys_gets_our_defaults(smollm2_path):
    assert recommended(smollm2_path)[0] == DEFAULTS


def test_default_sampling_flag_is_parsed_strictly():
    assert parse("temperature=0.7, top_k=20") == {"temperature": 0.7, "top_k": 20}
    for bad in ("temp=0.7", "top_p", "seed=3"):
        with pytest.raises(ValueError, match="default-sampling"):
            parse(bad)


@pytest.mark.parametrize("mode,expected", [("none", (1.0, 1.0, 0)), ("auto", (0.3, 0.95, 40))])
def test_openai_routes_keep_their_documented_defaults_unless_told(mode, expected):
    from tokenmill.server.openai import _common_params
    from tokenmill.server.protocol import ChatCompletionRequest
    from tokenmill.server.model_slot import ModelSlot
    from tokenmill.server.serving import ServerSettings
    state = ModelSlot("m", "", ServerSettings(generation_config=mode), sampling=dict(DEFAULTS))
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    p = _common_params(state, body, None, None)
    assert (p.temperature, p.top_p, p.top_k) == expected
    asked = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.7)
    assert _common_params(state, asked, None, None).temperature == 0.7  # what a request asks for stands
