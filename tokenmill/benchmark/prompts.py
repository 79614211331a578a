"""Fixed prompt sets for the serving benchmark: short questions, long documents, short
questions behind one shared ~1,000-token system prompt (what prefix caching is for), and
input-grounded edits (what prompt-lookup speculation is for)."""
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
    if name == "grounded":
        return [[{"role": "user", "content": GROUNDED[i % len(GROUNDED)]}] for i in range(n)]
    if name == "mixed":
        sets = ("short", "long", "shared")
        return [prompt_set(sets[i % 3], i // 3 + 1)[i // 3] for i in range(n)]
    raise ValueError(f"unknown prompt set {name!r}: short, long, shared, mixed or grounded")


# Input-grounded tasks: the answer copies much of a text or code given in the prompt (fix, edit,
# rewrite, extract), which is where prompt-lookup speculative decoding pays.
GROUNDED = [
    "Correct the spelling mistakes in this text and return only the corrected text:\n\n"
    "The comittee met on tuesday to discus the new libary. Everyone agred that the bulding was to "
    "small for the growing numbr of vistors, and that a new wing shoud be added befor next winter.",
    "Rewrite this Python function so that it uses a for loop instead of a while loop. Return only the "
    "code.\n\n```python\ndef total(values):\n    i = 0\n    result = 0\n    while i < len(values):\n"
    "        result += values[i]\n        i += 1\n    return result\n```",
    "Rename the variable `x` to `count` in this code and return the whole code:\n\n```python\n"
    "def count_words(text):\n    x = 0\n    for word in text.split():\n        if word:\n"
    "            x += 1\n    return x\n```",
    "Add type hints to this function and return the code only:\n\n```python\ndef greet(name, times):\n"
    "    lines = []\n    for i in range(times):\n        lines.append('Hello, ' + name + '!')\n"
    "    return '\\n'.join(lines)\n```",
    "Turn this paragraph into a bulleted list, one sentence per bullet:\n\n"
    "The museum opens at nine in the morning. Tickets can be bought at the entrance or online. "
    "Children under twelve enter for free. The café on the top floor closes at five. "
    "Guided tours start every hour from the main hall.",
    "Replace every occurrence of the word 'car' with 'bicycle' in this text and return it:\n\n"
    "My car is old but reliable. Every morning I take the car to work, and on weekends the car "
    "takes us to the lake. I have never thought about selling the car.",
    "Fix the bug in this JavaScript function (it should return the largest number) and return the "
    "corrected code:\n\n```javascript\nfunction largest(numbers) {\n  let best = numbers[0];\n"
    "  for (const n of numbers) {\n    if (n < best) {\n      best = n;\n    }\n  }\n  return best;\n}\n```",
    "Convert these names to the format 'Last, First' and return the list:\n\n"
    "Ada Lovelace\nAlan Turing\nGrace Hopper\nDonald Knuth\nBarbara Liskov\nEdsger Dijkstra",
    "Summarise this text in one sentence, reusing its words:\n\n"
    "The river flooded the lower town after three days of heavy rain. The water reached the "
    "market square and the old bridge was closed. Volunteers filled sandbags through the night, "
    "and by the morning the water had started to go down.",
    "Add a docstring to this function and return the whole function:\n\n```python\n"
    "def celsius_to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32\n```",
    "Put these sentences in the past tense and return them:\n\n"
    "I walk to the station. The train arrives late. We sit by the window and watch the fields. "
    "My sister reads a book while I write a letter.",
    "Make this SQL query select only active users, and return the query:\n\n```sql\n"
    "SELECT id, name, email\nFROM users\nORDER BY name;\n```",
]
