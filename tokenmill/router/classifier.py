"""Task-complexity classifier for hybrid routing: explainable features, weights and a
threshold, all in ClassifierConfig. Easy tasks go to the small (cheap, local) route; hard ones
to the large route."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ClassifierConfig

_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|analy[sz]e|analysis|compare|contrast|evaluate|explain why|prove|"
    r"derive|trade-?offs?|pros and cons|implications|critique|reason(ing)?|justify|assess|"
    r"design|architecture|optimi[sz]e|strategy)\b", re.I)
_CODE = re.compile(r"```|^\s*(def |class |import |#include|function |public |SELECT |for \(|if \()", re.M)
_NUMBERED = re.compile(r"^\s*(\d+[.)]|[-*]\s)", re.M)


@dataclass
class Decision:
    route: str           # "small" or "large"
    score: float
    features: dict

    def explain(self) -> str:
        parts = ", ".join(f"{k}={v:g}" for k, v in self.features.items())
        return f"score {self.score:.2f} ({parts})"


def _text_of(body: dict) -> tuple[str, int]:
    if "messages" in body:
        msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            texts.append(str(c or ""))
        return "\n".join(texts), sum(1 for m in msgs if m.get("role") == "user")
    p = body.get("prompt")
    return (p if isinstance(p, str) else " ".join(map(str, p or []))), 1


def classify(body: dict, cfg: ClassifierConfig) -> Decision:
    text, user_turns = _text_of(body)
    f = {
        "length": min(cfg.max_length_points, len(text) / cfg.chars_per_point),
        "turns": cfg.turn_weight * max(0, user_turns - 1),
        "code": cfg.code_weight if _CODE.search(text) else 0.0,
        "reasoning": min(cfg.max_reasoning_points, cfg.reasoning_weight * len(_REASONING.findall(text))),
        "multipart": min(cfg.max_multipart_points, cfg.multipart_weight * max(
            0, len(_NUMBERED.findall(text)) + text.count("?") - 1)),
    }
    score = sum(f.values())
    return Decision("large" if score >= cfg.large_threshold else "small", score,
                    {k: round(v, 2) for k, v in f.items()})
