"""Structured output: a grammar (JSON schema, regex, choice list, Lark/GBNF) held by llguidance,
applied as a logits processor.

    GrammarSpec(kind, value) --GrammarCompiler.compile--> GrammarProcessor (one LLMatcher)

Each step, for each constrained row: the matcher takes the tokens sampled since its last call,
fills the allowed-token bitmask, and the row's other tokens become -inf, before any
temperature, top-k, top-p or min-p. The mask is kept aligned with the model's tokenization
(forced text in its canonical tokens, a forbidden token's mass credited to its longest allowed
prefix: token_alignment.py). Unconstrained rows are untouched.
Compiled grammars are cached by their text; every request (each of its n samples) gets its own
copy of the matcher. Compilation has llguidance's parser limits, so a pathological schema is
refused quickly with GrammarError (a 400 at the server).

How a grammar combines with the other stops: EOS is allowed exactly when the grammar can end,
and forced when nothing else can follow; max_tokens and stop strings may cut the answer (it is
then a prefix of a valid one, finish_reason "length" / "stop"); ignore_eos and min_tokens are
refused with a grammar, since either could force tokens the grammar forbids.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .token_alignment import TokenBytes, aligned_mask, allowed_tokens

KINDS = ("json", "regex", "choice", "grammar")
_JSON_FORM = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    pass


@dataclass(frozen=True)
class GrammarSpec:
    kind: str        # json (value: a schema as JSON text) | regex | choice (JSON list) | grammar (Lark/GBNF)
    value: str

    @classmethod
    def json_schema(cls, schema) -> "GrammarSpec":
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise GrammarError(f"the JSON schema is not valid JSON: {e}") from e
        if not isinstance(schema, dict):
            raise GrammarError("a JSON schema must be an object")
        # one space after ',' and ':', none elsewhere outside strings: no whitespace loops
        # (a model can otherwise fill max_tokens with newlines), and the form OpenAI answers in
        schema = {"x-guidance": dict(_JSON_FORM, **schema.get("x-guidance", {})),
                  **{k: v for k, v in schema.items() if k != "x-guidance"}}
        return cls("json", json.dumps(schema))  # key order kept: properties come out in it

    @classmethod
    def choice(cls, options) -> "GrammarSpec":
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise GrammarError("choice must be a non-empty list of strings")
        return cls("choice", json.dumps(options))


_LIMITS = dict(max_grammar_size=500_000, step_lexer_fuel=1_000_000, initial_lexer_fuel=1_000_000,
               max_items_in_row=2_000)


class GrammarCompiler:
    """One per engine: the llguidance view of the tokenizer, and a cache of compiled grammars."""

    def __init__(self, tokenizer, vocab_size: int, cache_size: int = 256, cache_bytes: int = 16 * 2**20):
        self._tokenizer, self._vocab = tokenizer, vocab_size
        self._ll = None
        self._cache: OrderedDict[GrammarSpec, object] = OrderedDict()
        # bounded in entries and in the bytes of their specs (a compiled grammar grows with its
        # spec); a spec over an eighth of the budget is compiled every time, never kept
        self._cache_size, self._cache_bytes, self._cached_bytes = cache_size, cache_bytes, 0
        self._lock = threading.Lock()
        self.compiled = 0   # grammars compiled (cache misses)
        self.hits = 0
        self.token_alignment = True   # engine/token_alignment.py; False: the plain mask
        self._token_bytes = None

    def _ll_tokenizer(self):
        if self._ll is None:
            import llguidance
            self._ll = llguidance.LLTokenizer(self._tokenizer.tok.to_str(), n_vocab=self._vocab,
                                              eos_token=self._tokenizer.eos_id)
        return self._ll

    def _alignment(self):
        # built by the first grammar request, off the engine thread: ~0.7 s and ~40 MB of RSS
        # with the llguidance tokenizer for a 49k vocabulary, which a server without grammar
        # traffic should not carry
        if not self.token_alignment:
            return None
        with self._lock:
            if self._token_bytes is None:
                self._token_bytes = TokenBytes(self._ll_tokenizer(), self._vocab)
        return self._token_bytes

    def compile(self, spec: GrammarSpec) -> "GrammarProcessor":
        import llguidance
        if spec.kind not in KINDS:
            raise GrammarError(f"unknown grammar kind {spec.kind!r}")
        tb = self._alignment()
        with self._lock:
            proto = self._cache.get(spec)
            if proto is not None:
                self._cache.move_to_end(spec)
                self.hits += 1
                return GrammarProcessor(proto, self._vocab, self._tokenizer.eos_id, tb)
        fmt = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}[spec.kind]
        try:
            text = llguidance.grammar_from(fmt, spec.value)
        except (ValueError, TypeError) as e:
            raise GrammarError(f"invalid {spec.kind} grammar: {e}") from e
        is_error, warnings = llguidance.LLMatcher.validate_grammar_with_warnings(
            text, self._ll_tokenizer(), limits=llguidance.LLParserLimits(**_LIMITS))
        if is_error:
            raise GrammarError(f"invalid {spec.kind} grammar: {'; '.join(warnings)[:500]}")
        if warnings:  # e.g. a schema keyword the backend cannot enforce: never silently ignored
            raise GrammarError(f"the {spec.kind} grammar cannot be enforced: {'; '.join(warnings)[:500]}")
        proto = llguidance.LLMatcher(self._ll_tokenizer(), text, limits=llguidance.LLParserLimits(**_LIMITS))
        if proto.is_error():
            raise GrammarError(f"invalid {spec.kind} grammar: {proto.get_error()[:500]}")
        with self._lock:
            self.compiled += 1
            if len(spec.value) <= self._cache_bytes // 8 and spec not in self._cache:
                self._cache[spec] = proto
                self._cached_bytes += len(spec.value)
            while len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes:
                old, _ = self._cache.popitem(last=False)
                self._cached_bytes -= len(old.value)
        return GrammarProcessor(proto, self._vocab, self._tokenizer.eos_id, tb)


class GrammarProcessor:
    """A logits processor with state: its own matcher. clone() gives each sample its own."""

    def __init__(self, proto, vocab_size: int, eos_id: int | None, token_bytes: TokenBytes | None = None):
        self._proto = proto
        self.matcher = proto.deep_copy()
        self._vocab, self._eos = vocab_size, eos_id
        self._tb = token_bytes
        self._consumed = 0
        self._bitmask = None

    def clone(self) -> "GrammarProcessor":
        return GrammarProcessor(self._proto, self._vocab, self._eos, self._tb)

    def _catch_up(self, output_ids: list[int]) -> None:
        for tok in output_ids[self._consumed:]:
            self.matcher.consume_token(tok)
        self._consumed = len(output_ids)

    def valid_draft(self, output_ids: list[int], draft: list[int]) -> int:
        """How many of a speculative draft's tokens the grammar accepts after output_ids."""
        self._catch_up(output_ids)
        if self.matcher.is_error() or self.matcher.is_stopped():
            return 0
        return self.matcher.validate_tokens(draft)

    def forced_tokens(self, output_ids: list[int]) -> list[int]:
        """The tokens the grammar forces after output_ids (a speculative draft), else []."""
        self._catch_up(output_ids)
        if self.matcher.is_error() or self.matcher.is_stopped():
            return []
        return self.matcher.compute_ff_tokens()

    def rollback_to(self, num_output_tokens: int) -> None:
        """Forget draft tokens consumed while verifying (rows saw them as accepted)."""
        if self._consumed > num_output_tokens:
            self.matcher.rollback(self._consumed - num_output_tokens)
            self._consumed = num_output_tokens

    def __call__(self, output_ids: list[int], row: torch.Tensor) -> torch.Tensor:
        # row: (V,) logits of one request (written in place); tokens the grammar forbids become -inf
        import llguidance.torch as lt
        self._catch_up(output_ids)
        if self._bitmask is None:
            self._bitmask = lt.allocate_token_bitmask(1, self._vocab)
        if self.matcher.is_error() or self.matcher.is_stopped():
            # cannot go on inside the grammar: only EOS (the request then ends)
            allowed = torch.full_like(row, float("-inf"))
            if self._eos is not None:
                allowed[self._eos] = 0.0
            return allowed
        lt.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        if self._tb is not None:
            return aligned_mask(self.matcher, row, self._bitmask[0], self._tb)
        allowed = allowed_tokens(self._bitmask[0], row.shape[0])
        return row.masked_fill_(~allowed.to(row.device), float("-inf"))  # in place: no page faults
