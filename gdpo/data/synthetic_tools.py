"""Synthetic tool-calling data in the ToolRL format, for the ``tiny`` preset (never BFCL, never ToolRL's data).

The catalogue is built from parts: each function applies a verb to a noun (``book_hotel``, ``track_parcel``; 126
functions, 34 nouns in 13 domains), takes the noun's typed parameters (string, integer, number, boolean; some
required, some optional with a default), and is requested by phrasings that contain the verb, the noun and every
required value. A sample lists the called function(s) plus a distractor (sharing the verb or the noun half the
time) and asks for one call, two calls (parallel), or nothing (small talk, or a function that is not listed,
answered with ``<response>``).

Train and test use disjoint sets of functions, and every test function's verb and noun occur in training
functions: the test split measures calling an unseen function whose name is made of familiar words. A
catalogue of unrelated hand-written names (this module's first version, 26 functions) left nothing to
generalise from: the tiny model learnt the training names by heart and never produced an unseen one.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CATALOGUE", "Function", "Param", "ToolSample", "generate_split", "split_functions"]

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Hanoi", "Perth", "Quito", "Riga"]
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
DATES = ["2025-03-01", "2025-04-12", "2025-05-20", "2025-06-08", "2025-07-15", "2025-09-30"]
ITEMS = ["lamp", "kettle", "backpack", "monitor", "bicycle", "guitar", "blender"]
TOPICS = ["budget", "launch", "hiring", "design", "travel", "training"]


@dataclass(frozen=True)
class Param:
    """One parameter: JSON type, description, how to draw a value, how a request mentions it."""

    name: str
    type: str  # "string", "integer", "number", "boolean"
    description: str
    values: tuple  # candidate values
    clause: str  # how a request mentions the parameter, with {value}
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Function:
    name: str
    domain: str
    description: str
    params: tuple[Param, ...]
    templates: tuple[str, ...]  # requests naming every required parameter as {param_name}

    @property
    def words(self) -> tuple[str, str]:
        """The verb and the noun the name is made of: ``book_hotel`` -> ``("book", "hotel")``."""
        verb, noun = self.name.split("_", 1)
        return verb, noun

    def schema(self) -> dict:
        """The tool as listed in the prompt: name, description, parameters {name: {description, type, default}}."""
        params = {}
        for p in self.params:
            entry = {"description": p.description, "type": p.type}
            if not p.required:
                entry["default"] = p.default
            params[p.name] = entry
        return {"name": self.name, "description": self.description, "parameters": params}


# Required parameter kinds: the clause of each is part of the request.
_KINDS: dict[str, Param] = {
    "city": Param("city", "string", "City name", tuple(CITIES), " in {value}"),
    "origin": Param("origin", "string", "Departure city", tuple(CITIES), " from {value}"),
    "destination": Param("destination", "string", "Arrival city", tuple(CITIES), " to {value}"),
    "date": Param("date", "string", "Date (YYYY-MM-DD)", tuple(DATES), " on {value}"),
    "person": Param("name", "string", "Contact name", tuple(PEOPLE), " for {value}"),
    "recipient": Param("recipient", "string", "Who receives it", tuple(PEOPLE), " to {value}"),
    "amount": Param(
        "amount",
        "number",
        "Amount in dollars",
        (10.0, 25.5, 100.0, 250.0, 1200.0),
        " of {value} dollars",
    ),
    "nights": Param("nights", "integer", "Number of nights", (1, 2, 3, 4), " for {value} nights"),
    "days": Param("days", "integer", "Number of days", (1, 2, 3, 5, 7), " for {value} days"),
    "minutes": Param("minutes", "integer", "Length in minutes", (15, 30, 45, 90), " lasting {value} minutes"),
    "order_id": Param("order_id", "integer", "Order number", (1042, 2219, 3870, 5531), " number {value}"),
    "item": Param("item", "string", "Item name", tuple(ITEMS), " with a {value}"),
    "topic": Param("topic", "string", "Subject", tuple(TOPICS), " about {value}"),
    "room": Param("room", "string", "Room", ("kitchen", "bedroom", "office", "hall"), " in the {value}"),
    "level": Param("level", "integer", "Level from 0 to 100", (10, 30, 55, 80), " at level {value}"),
    "title": Param(
        "title",
        "string",
        "Title",
        ("Blue Train", "So What", "Clair de Lune", "Take Five"),
        " called {value}",
    ),
    "team": Param(
        "team", "string", "Team name", ("Falcons", "Rovers", "Comets", "Tigers"), " of the {value}"
    ),
    "dish": Param("dish", "string", "Dish", ("pancakes", "curry", "lasagna", "falafel"), " for {value}"),
    "text": Param(
        "text",
        "string",
        "Free text",
        ("on my way", "pay rent", "water plants", "see you soon"),
        " saying {value}",
    ),
    "temperature": Param("temperature", "number", "Degrees", (19.5, 21.0, 22.5), " at {value} degrees"),
}
# Optional parameter kinds: the clause is appended to the request with prob. 0.4, else the default holds.
_OPTIONAL: dict[str, Param] = {
    "unit": Param(
        "unit",
        "string",
        "celsius or fahrenheit",
        ("celsius", "fahrenheit"),
        " in {value}",
        required=False,
        default="celsius",
    ),
    "cabin": Param(
        "cabin",
        "string",
        "economy, business or first",
        ("business", "first"),
        " in {value} class",
        required=False,
        default="economy",
    ),
    "guests": Param(
        "guests", "integer", "Number of guests", (2, 3, 4), " with {value} guests", required=False, default=1
    ),
    "quantity": Param(
        "quantity", "integer", "How many", (2, 3, 4), " times {value}", required=False, default=1
    ),
    "urgent": Param(
        "urgent", "boolean", "Mark as urgent", (True,), ", marked urgent", required=False, default=False
    ),
    "vegetarian": Param(
        "vegetarian", "boolean", "Vegetarian only", (True,), ", vegetarian", required=False, default=False
    ),
    "shuffle": Param(
        "shuffle",
        "boolean",
        "Shuffle afterwards",
        (True,),
        " and shuffle after it",
        required=False,
        default=False,
    ),
    "max_price": Param(
        "max_price",
        "number",
        "Highest price",
        (50.0, 100.0, 300.0),
        " under {value} dollars",
        required=False,
        default=None,
    ),
}
# Objects: (noun, domain, required parameter kinds, optional kinds, verbs that apply). A function is one
# verb applied to one noun, named ``<verb>_<noun>``; its requests contain both words.
_OBJECTS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("weather", "weather", ("city",), ("unit",), ("get", "check", "show")),
    ("forecast", "weather", ("city", "days"), ("unit",), ("get", "show", "send")),
    ("flight", "travel", ("origin", "destination", "date"), ("cabin",), ("find", "book", "cancel", "check")),
    ("train", "travel", ("origin", "destination", "date"), (), ("find", "book", "cancel")),
    ("hotel", "travel", ("city", "nights"), ("guests",), ("find", "book", "cancel", "rate")),
    ("taxi", "travel", ("origin", "destination"), (), ("book", "cancel", "track")),
    ("table", "food", ("city", "date"), ("guests",), ("book", "cancel", "find")),
    ("recipe", "food", ("dish",), ("vegetarian",), ("find", "show", "save", "rate")),
    ("meeting", "calendar", ("topic", "date"), ("urgent",), ("create", "cancel", "move", "list")),
    ("reminder", "calendar", ("text", "date"), ("urgent",), ("create", "delete", "set", "list")),
    ("event", "calendar", ("topic", "date"), ("urgent",), ("create", "delete", "find", "list")),
    ("order", "shopping", ("order_id",), ("urgent",), ("track", "cancel", "check", "rate")),
    ("parcel", "shopping", ("order_id",), (), ("track", "find", "send")),
    ("product", "shopping", ("item",), ("max_price",), ("find", "rate", "save", "show")),
    ("cart", "shopping", ("item",), ("quantity",), ("update", "show", "check")),
    ("payment", "finance", ("amount", "recipient"), ("urgent",), ("send", "cancel", "check", "create")),
    ("invoice", "finance", ("amount", "date"), (), ("create", "send", "delete", "find")),
    ("budget", "finance", ("amount", "topic"), (), ("set", "update", "show", "check")),
    ("message", "messaging", ("recipient", "text"), ("urgent",), ("send", "delete", "find")),
    ("call", "messaging", ("person",), (), ("start", "end", "move", "list")),
    ("email", "messaging", ("recipient", "topic"), ("urgent",), ("send", "delete", "find", "save")),
    ("contact", "messaging", ("person",), (), ("create", "delete", "find", "update")),
    ("song", "music", ("title",), ("shuffle",), ("play", "save", "find", "rate")),
    ("playlist", "music", ("title",), ("shuffle",), ("play", "create", "delete", "show")),
    ("volume", "music", ("level",), (), ("set", "check", "update")),
    ("lights", "home", ("room",), (), ("start", "end", "check", "set")),
    ("heating", "home", ("room", "temperature"), (), ("set", "start", "end", "check")),
    ("alarm", "home", ("minutes",), (), ("set", "start", "end", "delete")),
    ("workout", "health", ("date", "minutes"), (), ("start", "end", "list", "save")),
    ("score", "sports", ("team",), (), ("get", "show", "check")),
    ("match", "sports", ("team", "date"), (), ("find", "watch", "rate", "list")),
    ("route", "maps", ("origin", "destination"), (), ("find", "show", "save", "send")),
    ("report", "work", ("topic", "date"), ("urgent",), ("create", "send", "show", "delete")),
    ("note", "work", ("text",), (), ("create", "delete", "save", "show")),
)
# Request phrasings: every one contains the verb and the noun, then the parameters' clauses.
_PHRASES = (
    "Please {verb} the {noun}{clauses}.",
    "Can you {verb} a {noun}{clauses}?",
    "{Verb} my {noun}{clauses}.",
)


def _function(noun: str, domain: str, required: tuple, optional: tuple, verb: str) -> Function:
    needed = [_KINDS[k] for k in required]
    clauses = "".join(p.clause.replace("{value}", "{" + p.name + "}") for p in needed)
    templates = tuple(
        p.replace("{clauses}", clauses)
        .replace("{verb}", verb)
        .replace("{Verb}", verb.capitalize())
        .replace("{noun}", noun)
        for p in _PHRASES
    )
    params = (*needed, *(_OPTIONAL[k] for k in optional))
    return Function(f"{verb}_{noun}", domain, f"{verb.capitalize()} a {noun}.", params, templates)


CATALOGUE: tuple[Function, ...] = tuple(
    _function(noun, domain, required, optional, verb)
    for noun, domain, required, optional, verbs in _OBJECTS
    for verb in verbs
)

SMALL_TALK = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that is all.", "You're welcome. Have a good day!"),
    ("Who are you?", "I am an assistant that can use the tools listed above."),
    ("Tell me a joke.", "I can only help with the tools I have, and none of them tells jokes."),
    ("Can you order me a pizza?", "Sorry, none of my tools can order food."),
)
NO_CALL_THOUGHT = "No listed tool fits."


def thought(calls: list[dict]) -> str:
    """The reasoning of a call answer: the action of each call in words ("book hotel, send report"), a short
    trace that ties the request's words to the function names that follow."""
    return ", ".join(c["name"].replace("_", " ") for c in calls)


@dataclass
class ToolSample:
    """One example: the tools shown, the user's request, and the ToolRL-format ground-truth answer."""

    tools: list[dict]
    request: str
    ground_truth: str
    calls: list[dict] = field(default_factory=list)


def split_functions(seed: int = 0, test_fraction: float = 0.25) -> tuple[list[Function], list[Function]]:
    """Disjoint train/test function sets (fixed by ``seed``).

    A test function is never seen in training, but its verb and its noun each are, in other functions (the
    test asks for composing known words into an unseen name, as an unseen real API reuses familiar words).
    """
    funcs = sorted(CATALOGUE, key=lambda f: f.name)
    random.Random(seed).shuffle(funcs)
    want = max(1, round(len(funcs) * test_fraction))
    verbs = Counter(f.words[0] for f in funcs)
    nouns = Counter(f.words[1] for f in funcs)
    test = []
    for f in funcs:
        verb, noun = f.words
        if len(test) < want and verbs[verb] > 1 and nouns[noun] > 1:
            test.append(f)
            verbs[verb] -= 1
            nouns[noun] -= 1
    chosen = {f.name for f in test}
    return [f for f in funcs if f.name not in chosen], test


def _render(rng: random.Random, fn: Function) -> tuple[str, dict]:
    values = {p.name: rng.choice(p.values) for p in fn.params if p.required}
    text = rng.choice(fn.templates).format(**values)
    for p in fn.params:
        if not p.required and rng.random() < 0.4:
            values[p.name] = rng.choice(p.values)
            text = text.rstrip(".?") + p.clause.format(value=values[p.name]) + text[-1]
    return text, {"name": fn.name, "parameters": values}


def _answer(calls: list[dict]) -> str:
    return (
        f"<think>{thought(calls)}</think>\n<tool_call>\n"
        + "\n".join(json.dumps(c) for c in calls)
        + "\n</tool_call>"
    )


def _distractors(
    rng: random.Random, called: list[Function], functions: list[Function], k: int
) -> list[Function]:
    """``k`` other tools, each sharing the verb or the noun of a called one when possible (hard negatives)."""
    others = [f for f in functions if f not in called]
    words = {w for f in called for w in f.words}
    near = [f for f in others if set(f.words) & words]
    picked: list[Function] = []
    for _ in range(min(k, len(others))):
        pool = [f for f in (near if near and rng.random() < 0.5 else others) if f not in picked]
        picked.append(rng.choice(pool or [f for f in others if f not in picked]))
    return picked


def generate_split(
    functions: list[Function],
    n: int,
    seed: int,
    *,
    parallel: float = 0.2,
    no_call: float = 0.15,
    distractors: int = 1,
) -> list[ToolSample]:
    """``n`` samples over ``functions``: single calls, two-call (parallel) requests, and no-call turns.

    Half of the no-call turns are small talk; the other half ask for a function of the split that is not
    among the listed tools (the answer says no tool can do it), so the tool list, not the request alone,
    decides whether to call.
    """
    if not functions:
        raise ValueError("generate_split needs at least one function")
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        kind = rng.random()
        if kind < no_call:
            if rng.random() < 0.5 or len(functions) < 2:
                shown = rng.sample(functions, min(len(functions), 1 + distractors))
                request, reply = rng.choice(SMALL_TALK)
            else:
                wanted = rng.choice(functions)
                shown = _distractors(rng, [wanted], functions, 1 + distractors)
                request = _render(rng, wanted)[0]
                reply = "Sorry, none of my tools can {} a {}.".format(*wanted.words)
            truth = f"<think>{NO_CALL_THOUGHT}</think>\n<response>{reply}</response>"
            samples.append(ToolSample([f.schema() for f in shown], request, truth))
            continue
        count = 2 if kind < no_call + parallel else 1
        called = [rng.choice(functions) for _ in range(count)]
        texts, calls = zip(*(_render(rng, fn) for fn in called))
        unique = list({f.name: f for f in called}.values())
        shown = unique + _distractors(rng, unique, functions, distractors)
        rng.shuffle(shown)
        request = " Also, ".join(t if i == 0 else t[0].lower() + t[1:] for i, t in enumerate(texts))
        samples.append(ToolSample([f.schema() for f in shown], request, _answer(list(calls)), list(calls)))
    return samples
