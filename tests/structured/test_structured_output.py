"""Structured output with the real clients against a live server on the real model: every
sampled answer holds to its schema, whatever the seed."""
import concurrent.futures as cf
import json
import re
from enum import Enum

import httpx
import jsonschema
import ollama
import openai
import pytest
from huggingface_hub import InferenceClient
from pydantic import BaseModel, Field


class Continent(str, Enum):
    europe = "Europe"
    asia = "Asia"
    africa = "Africa"
    americas = "Americas"
    oceania = "Oceania"


class City(BaseModel):
    name: str
    country: str
    population: float = Field(ge=1000, le=50_000_000)
    continent: Continent
    landmarks: list[str] = Field(min_length=1, max_length=3)


STRICT = {
    "$defs": {"person": {"type": "object", "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"anyOf": [{"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"}, {"type": "null"}]}},
        "required": ["name", "age", "email"], "additionalProperties": False}},
    "type": "object",
    "properties": {"team": {"type": "string", "enum": ["red", "green", "blue"]},
                   "members": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1, "maxItems": 3},
                   "score": {"type": "number", "minimum": -1, "maximum": 1}},
    "required": ["team", "members", "score"], "additionalProperties": False}


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)


def ask_city(s, seed):
    return client(s).chat.completions.parse(
        model=s.model, messages=[{"role": "user", "content": "Describe Paris."}], response_format=City,
        temperature=1, seed=seed, max_tokens=300)


def test_parse_city_for_fifty_seeds(smol):
    """Must-show 1: `.parsed` is a valid City for seeds 0-49 at temperature 1, max_tokens 300.
    Every answer that stops parses; at temperature 1 a 135M model still sometimes writes one
    string past 300 tokens (then finish_reason "length", the SDK's LengthFinishReasonError,
    never invalid JSON). With the mask kept to the model's tokenization
    (engine/token_alignment.py) that is rare (bench/structured_output.py --answers 50 with int8
    KV: 1 of 250 at T=1, 2 of 250 at T=0.8; 29 and 43 of 250 with the plain mask), and seeds
    0-49 all close (50 of 50); the bound leaves room for a numerics change to move one seed."""
    def one(seed):
        try:
            return ask_city(smol, seed).choices[0]
        except openai.LengthFinishReasonError as e:
            return e.completion.choices[0]
    with cf.ThreadPoolExecutor(16) as pool:
        choices = list(pool.map(one, range(50)))
    done = [c for c in choices if c.finish_reason == "stop"]
    assert all(isinstance(c.message.parsed, City) for c in done)
    cut = [c for c in choices if c.finish_reason != "stop"]
    assert all(c.finish_reason == "length" for c in cut)
    print(f"\nCity x 50 seeds: {len(done)} complete and valid, {len(cut)} cut at 300 tokens")
    assert len(done) >= 47, [c.message.content[:120] for c in cut]
    assert len({c.message.content for c in choices}) > 10  # really sampled


def test_strict_schema_with_refs_anyof_enum_bounds_patterns(smol):
    def one(seed):
        r = client(smol).chat.completions.create(
            model=smol.model, messages=[{"role": "user", "content": "Make up a small team."}], temperature=1,
            seed=seed, max_tokens=400,
            response_format={"type": "json_schema", "json_schema": {"name": "team", "schema": STRICT, "strict": True}})
        return r.choices[0]
    # at temperature 1 about 2 answers in 3 close within 400 tokens (61 and 69 of 96 seeds with
    # int8 and float16 KV); the rest run on inside a string and end by length, still a prefix
    with cf.ThreadPoolExecutor(16) as pool:
        choices = list(pool.map(one, range(48)))
    done = [c for c in choices if c.finish_reason == "stop"]
    for c in done:
        jsonschema.validate(json.loads(c.message.content), STRICT)
    assert all(c.finish_reason == "length" for c in choices if c not in done)
    print(f"\nstrict schema x 48 seeds: {len(done)} complete and valid")
    assert len(done) >= 20


def outside_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def test_json_object_is_compact_and_ends(smol):
    """Whitespace cannot loop: one space after ',' and ':' only, even in an answer cut by its
    limit (greedy SmolLM2 repeats a list item about cats until max_tokens). A prompt that
    invites prose still ends with a JSON object."""
    for prompt in ("Give me a JSON object about cats.", "Write a long poem about the sea, in prose."):
        r = client(smol).chat.completions.create(
            model=smol.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=400,
            response_format={"type": "json_object"})
        c = r.choices[0]
        assert not re.search(r"\s{2,}", outside_strings(c.message.content))
        if prompt.startswith("Write"):
            assert c.finish_reason == "stop" and isinstance(json.loads(c.message.content), dict)


def test_tiny_max_tokens_is_a_length_finish(smol):
    with pytest.raises(openai.LengthFinishReasonError):
        client(smol).chat.completions.parse(model=smol.model, messages=[{"role": "user", "content": "Paris"}],
                                            response_format=City, max_tokens=5)
    r = client(smol).chat.completions.create(
        model=smol.model, messages=[{"role": "user", "content": "Paris"}], max_tokens=3, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "City", "schema": City.model_json_schema()}})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content.startswith('{"')  # what was produced, a prefix of a City


def test_streamed_deltas_equal_the_whole_answer(smol):
    kw = dict(model=smol.model, messages=[{"role": "user", "content": "Describe Rome."}], temperature=0,
              max_tokens=300, response_format={"type": "json_schema",
                                               "json_schema": {"name": "City", "schema": City.model_json_schema()}})
    whole = client(smol).chat.completions.create(**kw).choices[0].message.content
    parts = [ch.choices[0].delta.content or "" for ch in client(smol).chat.completions.create(stream=True, **kw)
             if ch.choices]
    assert "".join(parts) == whole
    City.model_validate_json(whole)


def test_ollama_format_json_and_schema(smol):
    o = ollama.Client(host=smol.url)
    r = o.chat(model=smol.model, messages=[{"role": "user", "content": "A JSON object about dogs."}],
               format="json", options={"temperature": 0, "num_predict": 300})
    assert isinstance(json.loads(r.message.content), dict) and r.done_reason == "stop"
    # sampled: the schema allows extra keys, and a seed's path may run on in one until
    # num_predict (seed 1 does, since the q4_1 default); every answer that ends must be a City
    ended = 0
    for seed in (1, 2, 3):
        r = o.chat(model=smol.model, messages=[{"role": "user", "content": "Describe Tokyo."}],
                   format=City.model_json_schema(), options={"temperature": 0.8, "seed": seed, "num_predict": 300})
        if r.done_reason == "stop":
            City.model_validate_json(r.message.content)
            ended += 1
    assert ended >= 2


def test_tgi_grammar(smol):
    tgi = InferenceClient(base_url=smol.url)
    out = tgi.text_generation("The year the first man walked on the moon:", max_new_tokens=10,
                              grammar={"type": "regex", "value": "[12][0-9]{3}"})
    assert re.fullmatch(r"[12][0-9]{3}", out)
    # a repetition penalty keeps greedy decoding out of a loop inside a string ("Casa de la Casa
    # de la ..." ran past 300 tokens in one weight format); an answer that ends must be a City
    out = tgi.text_generation("Describe Madrid as JSON:", max_new_tokens=300, repetition_penalty=1.3,
                              grammar={"type": "json", "value": City.model_json_schema()}, details=True)
    assert out.details.finish_reason != "length", out.generated_text
    City.model_validate_json(out.generated_text)


def test_choice_and_regex_the_vllm_way(smol):
    r = client(smol).chat.completions.create(
        model=smol.model, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=1, seed=3,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})
    assert r.choices[0].message.content in ("yes", "no", "maybe")
    r = client(smol).completions.create(model=smol.model, prompt="Phone: ", max_tokens=20,
                                        extra_body={"guided_regex": r"\d{3}-\d{4}"})
    assert re.fullmatch(r"\d{3}-\d{4}", r.choices[0].text)


@pytest.mark.parametrize("extra,needle", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "format": "weird"}}}}}}, "weird"),
    ({"extra_body": {"guided_regex": "a(b"}}, "regex"),
    ({"extra_body": {"structured_outputs": {"grammar": "start: foo"}}}, "grammar"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"extra_body": {"guided_regex": "a+", "guided_choice": ["a"]}}, "one kind"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}}, "ignore_eos"),
])
def test_bad_grammars_are_400_naming_the_problem(smol, extra, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client(smol).chat.completions.create(model=smol.model, messages=[{"role": "user", "content": "x"}],
                                             max_tokens=5, **extra)
    assert needle in str(e.value)


def test_free_requests_next_to_constrained_ones_are_unchanged(smol):
    free = dict(model=smol.model, prompt="The history of Rome", max_tokens=24, temperature=0)
    alone = client(smol).completions.create(**free).choices[0].text

    def constrained(seed):
        return client(smol).chat.completions.create(
            model=smol.model, messages=[{"role": "user", "content": "Describe Oslo."}], response_format=City,
            temperature=1, seed=seed, max_tokens=200) if False else httpx.post(
            smol.url + "/v1/chat/completions", timeout=300, json={
                "model": smol.model, "messages": [{"role": "user", "content": "Describe Oslo."}], "seed": seed,
                "max_tokens": 200, "response_format": {"type": "json_schema", "json_schema": {
                    "name": "City", "schema": City.model_json_schema()}}})

    with cf.ThreadPoolExecutor(8) as pool:
        busy = [pool.submit(constrained, s) for s in range(6)]
        mixed = [pool.submit(lambda: client(smol).completions.create(**free).choices[0].text) for _ in range(2)]
        assert all(f.result() == alone for f in mixed)
        assert all(f.result().status_code == 200 for f in busy)
