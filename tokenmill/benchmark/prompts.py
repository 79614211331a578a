"""Fixed prompt sets for the serving benchmark: short questions, long documents, and short
questions behind one shared ~1,000-token system prompt (what prefix caching is for)."""
from __future__ import annotations

QUESTIONS = [
    "What is the capital of France?", "Explain photosynthesis in simple terms.",
    "Write a haiku about autumn.", "List three uses of copper.", "Why is the sky blue?",
    "How do vaccines work?", "Give me a tip for learning to cook.", "What is a prime number?",
    "Describe a sunset over the sea.", "How does a bicycle stay upright?",
    "What causes the seasons?", "Summarise the plot of Romeo and Juliet.",
    "How do bees make honey?", "What is the difference between weather and climate?",
    "Suggest a name for a bakery.", "How far is the moon from the earth?",
    "What is machine learning?", "Write a short poem about rain.",
    "How do I keep a plant alive indoors?", "What is the tallest mountain in Africa?",
    "Why do cats purr?", "Explain gravity to a child.", "What are clouds made of?",
    "How does a refrigerator keep food cold?", "What is the speed of light?",
    "Give three facts about octopuses.", "How do airplanes fly?", "What is a black hole?",
    "Describe the water cycle.", "How are rainbows formed?", "What does a librarian do?",
    "How is paper made?",
]

_PARAGRAPH = ("The history of the city begins with a small settlement on the river bank, where traders "
              "exchanged salt, grain and cloth. Over the centuries the settlement grew into a market "
              "town, then into a city with walls, bridges and a cathedral. Each generation added "
              "streets and squares, and each left traces in the names of places that people still use "
              "today without knowing where they come from. ")


def long_document(i: int, words: int = 700) -> str:
    text = f"Document {i}. " + _PARAGRAPH * (words // len(_PARAGRAPH.split()) + 1)
    return " ".join(text.split()[:words]) + f"\n\nQuestion {i}: summarise the document in two sentences."


SHARED_SYSTEM = ("You are the support assistant of a large online shop. Follow these rules carefully. "
                 + " ".join(f"Rule {k}: always answer politely, mention the order number when the customer "
                            f"gives one, never promise a delivery date you cannot check, and keep answers "
                            f"short and useful." for k in range(1, 30)))


def prompt_set(name: str, n: int) -> list[list[dict]]:
    """n chat conversations of the named set."""
    if name == "short":
        return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" (#{i})"}] for i in range(n)]
    if name == "long":
        return [[{"role": "user", "content": long_document(i)}] for i in range(n)]
    if name == "shared":
        return [[{"role": "system", "content": SHARED_SYSTEM},
                 {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" (#{i})"}] for i in range(n)]
    if name == "mixed":
        sets = ("short", "long", "shared")
        return [prompt_set(sets[i % 3], i // 3 + 1)[i // 3] for i in range(n)]
    raise ValueError(f"unknown prompt set {name!r}: short, long, shared or mixed")
