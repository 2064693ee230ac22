"""Synthetic tool-calling data in the ToolRL format, for the ``tiny`` preset (never BFCL, never ToolRL's data).

A catalogue of made-up functions in several domains, each with typed parameters (string, integer, number,
boolean, enum), some required and some optional, and request templates. A sample lists the called function(s)
plus distractors as the available tools and asks for one call, two calls (parallel), or nothing (small talk or
an unsupported request, answered with ``<response>``). Train and test use disjoint sets of functions: the test
split measures calling functions the model has never seen.
"""

from __future__ import annotations

import random
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
    clause: str  # how an optional parameter is mentioned, with {value}
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Function:
    name: str
    domain: str
    description: str
    params: tuple[Param, ...]
    templates: tuple[str, ...]  # requests naming every required parameter as {param_name}

    def schema(self) -> dict:
        """The tool as listed in the prompt: name, description, parameters {name: {description, type, default}}."""
        params = {}
        for p in self.params:
            entry = {"description": p.description, "type": p.type}
            if not p.required:
                entry["default"] = p.default
            params[p.name] = entry
        return {"name": self.name, "description": self.description, "parameters": params}


def _p(name, type_, description, values, clause="", required=True, default=None):
    return Param(name, type_, description, tuple(values), clause, required, default)


CATALOGUE: tuple[Function, ...] = (
    Function(
        "get_weather",
        "weather",
        "Current weather for a city.",
        (
            _p("city", "string", "City name", CITIES),
            _p(
                "unit",
                "string",
                "celsius or fahrenheit",
                ["celsius", "fahrenheit"],
                " in {value}",
                False,
                "celsius",
            ),
        ),
        ("What is the weather in {city}?", "How warm is it in {city} right now?"),
    ),
    Function(
        "get_forecast",
        "weather",
        "Weather forecast for the next days.",
        (_p("city", "string", "City name", CITIES), _p("days", "integer", "Number of days", [1, 2, 3, 5, 7])),
        ("Give me the {days}-day forecast for {city}.", "Forecast for {city}, {days} days please."),
    ),
    Function(
        "air_quality",
        "weather",
        "Air quality index of a city.",
        (_p("city", "string", "City name", CITIES),),
        ("How clean is the air in {city}?", "Air quality in {city}?"),
    ),
    Function(
        "convert_currency",
        "finance",
        "Convert an amount between currencies.",
        (
            _p("amount", "number", "Amount to convert", [10.0, 25.5, 100.0, 250.0, 1200.0]),
            _p("source", "string", "Currency code to convert from", ["USD", "EUR", "JPY", "GBP"]),
            _p("target", "string", "Currency code to convert to", ["CHF", "CAD", "AUD", "NOK"]),
        ),
        ("Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?"),
    ),
    Function(
        "stock_price",
        "finance",
        "Latest price of a stock ticker.",
        (
            _p("ticker", "string", "Ticker symbol", ["ACME", "GLOBX", "INITech", "UMBR"]),
            _p(
                "include_volume",
                "boolean",
                "Also return the traded volume",
                [True],
                " with the traded volume",
                False,
                False,
            ),
        ),
        ("What is {ticker} trading at?", "Price of {ticker} stock?"),
    ),
    Function(
        "loan_payment",
        "finance",
        "Monthly payment of a loan.",
        (
            _p("principal", "number", "Loan amount", [5000.0, 12000.0, 30000.0]),
            _p("rate", "number", "Yearly interest rate in percent", [3.5, 4.0, 6.25]),
            _p("years", "integer", "Duration in years", [2, 5, 10]),
        ),
        ("Monthly payment for {principal} at {rate}% over {years} years?",),
    ),
    Function(
        "find_flights",
        "travel",
        "Search flights between two cities.",
        (
            _p("origin", "string", "Departure city", CITIES),
            _p("destination", "string", "Arrival city", CITIES),
            _p("date", "string", "Departure date (YYYY-MM-DD)", DATES),
            _p(
                "cabin",
                "string",
                "economy, business or first",
                ["business", "first"],
                " in {value} class",
                False,
                "economy",
            ),
        ),
        (
            "Find flights from {origin} to {destination} on {date}.",
            "I need to fly {origin} to {destination}, {date}.",
        ),
    ),
    Function(
        "book_hotel",
        "travel",
        "Book a hotel room.",
        (
            _p("city", "string", "City", CITIES),
            _p("nights", "integer", "Number of nights", [1, 2, 3, 4]),
            _p("guests", "integer", "Number of guests", [2, 3, 4], " for {value} guests", False, 1),
        ),
        ("Book a hotel in {city} for {nights} nights.", "Reserve {nights} nights in {city}."),
    ),
    Function(
        "local_time",
        "travel",
        "Local time in a city.",
        (_p("city", "string", "City", CITIES),),
        ("What time is it in {city}?", "Current local time in {city}?"),
    ),
    Function(
        "create_event",
        "calendar",
        "Add an event to the calendar.",
        (
            _p("title", "string", "Event title", TOPICS),
            _p("date", "string", "Date (YYYY-MM-DD)", DATES),
            _p(
                "duration_minutes",
                "integer",
                "Length in minutes",
                [30, 45, 90],
                " lasting {value} minutes",
                False,
                60,
            ),
        ),
        ("Schedule a {title} meeting on {date}.", "Put {title} on my calendar for {date}."),
    ),
    Function(
        "list_events",
        "calendar",
        "Events on a given day.",
        (_p("date", "string", "Date (YYYY-MM-DD)", DATES),),
        ("What is on my calendar on {date}?", "Show my events for {date}."),
    ),
    Function(
        "set_reminder",
        "calendar",
        "Set a reminder.",
        (
            _p(
                "text",
                "string",
                "What to remember",
                ["call mom", "pay rent", "water plants", "renew passport"],
            ),
            _p("date", "string", "Date (YYYY-MM-DD)", DATES),
        ),
        ("Remind me to {text} on {date}.",),
    ),
    Function(
        "search_products",
        "shopping",
        "Search the shop's catalogue.",
        (
            _p("query", "string", "What to look for", ITEMS),
            _p(
                "max_price",
                "number",
                "Highest price",
                [50.0, 100.0, 300.0],
                " under {value} dollars",
                False,
                None,
            ),
        ),
        ("Look for a {query}.", "Do you sell a {query}?"),
    ),
    Function(
        "track_order",
        "shopping",
        "Status of an order.",
        (_p("order_id", "integer", "Order number", [1042, 2219, 3870, 5531]),),
        ("Where is my order {order_id}?", "Track order {order_id}."),
    ),
    Function(
        "add_to_cart",
        "shopping",
        "Put an item in the cart.",
        (
            _p("item", "string", "Item name", ITEMS),
            _p("quantity", "integer", "How many", [2, 3, 4], " x{value}", False, 1),
        ),
        ("Add a {item} to my cart.", "Put the {item} in the basket."),
    ),
    Function(
        "play_song",
        "music",
        "Play a song.",
        (
            _p("title", "string", "Song title", ["Blue Train", "So What", "Clair de Lune", "Take Five"]),
            _p("shuffle", "boolean", "Shuffle afterwards", [True], " and shuffle after it", False, False),
        ),
        ("Play {title}.", "Put on {title} please."),
    ),
    Function(
        "set_volume",
        "music",
        "Set the playback volume.",
        (_p("level", "integer", "Volume from 0 to 100", [10, 30, 55, 80]),),
        ("Set the volume to {level}.", "Volume {level} please."),
    ),
    Function(
        "count_steps",
        "health",
        "Steps walked on a day.",
        (_p("date", "string", "Date (YYYY-MM-DD)", DATES),),
        ("How many steps did I walk on {date}?",),
    ),
    Function(
        "log_water",
        "health",
        "Record water intake.",
        (_p("liters", "number", "Liters drunk", [0.5, 1.0, 1.5, 2.0]),),
        ("Log {liters} liters of water.", "I drank {liters} liters of water."),
    ),
    Function(
        "set_thermostat",
        "home",
        "Set the thermostat temperature.",
        (
            _p("temperature", "number", "Target in degrees", [19.5, 21.0, 22.5]),
            _p(
                "room",
                "string",
                "Room",
                ["kitchen", "bedroom", "office"],
                " in the {value}",
                False,
                "living room",
            ),
        ),
        ("Set the heating to {temperature} degrees.", "Make it {temperature} degrees."),
    ),
    Function(
        "lights_off",
        "home",
        "Switch off the lights of a room.",
        (_p("room", "string", "Room", ["kitchen", "bedroom", "office", "hall"]),),
        ("Turn off the lights in the {room}.", "Lights off in the {room}."),
    ),
    Function(
        "send_message",
        "messaging",
        "Send a text message.",
        (
            _p("recipient", "string", "Contact name", PEOPLE),
            _p("text", "string", "Message", ["on my way", "running late", "see you soon"]),
        ),
        ("Text {recipient}: {text}.", "Send {recipient} a message saying {text}."),
    ),
    Function(
        "call_contact",
        "messaging",
        "Phone a contact.",
        (_p("name", "string", "Contact name", PEOPLE),),
        ("Call {name}.", "Phone {name} for me."),
    ),
    Function(
        "match_score",
        "sports",
        "Score of a team's last match.",
        (_p("team", "string", "Team name", ["Falcons", "Rovers", "Comets", "Tigers"]),),
        ("How did the {team} do?", "Score of the last {team} game?"),
    ),
    Function(
        "find_recipe",
        "recipes",
        "Find a recipe.",
        (
            _p("dish", "string", "Dish", ["pancakes", "curry", "lasagna", "falafel"]),
            _p("vegetarian", "boolean", "Vegetarian only", [True], ", vegetarian", False, False),
        ),
        ("How do I make {dish}?", "Recipe for {dish}?"),
    ),
    Function(
        "route_time",
        "maps",
        "Travel time between two places.",
        (
            _p("origin", "string", "Start", CITIES),
            _p("destination", "string", "End", CITIES),
            _p(
                "mode",
                "string",
                "driving, walking or transit",
                ["walking", "transit"],
                " by {value}",
                False,
                "driving",
            ),
        ),
        ("How long from {origin} to {destination}?", "Travel time {origin} to {destination}?"),
    ),
)

SMALL_TALK = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that is all.", "You're welcome. Have a good day!"),
    ("Who are you?", "I am an assistant that can use the tools listed above."),
    ("Tell me a joke.", "I can only help with the tools I have, and none of them tells jokes."),
    ("Can you order me a pizza?", "Sorry, none of my tools can order food."),
)
THOUGHT = "I should call the right tool with the right parameters."
NO_CALL_THOUGHT = "No tool fits this request, so I answer directly."


@dataclass
class ToolSample:
    """One example: the tools shown, the user's request, and the ToolRL-format ground-truth answer."""

    tools: list[dict]
    request: str
    ground_truth: str
    calls: list[dict] = field(default_factory=list)


def split_functions(seed: int = 0, test_fraction: float = 0.25) -> tuple[list[Function], list[Function]]:
    """Disjoint train/test function sets (fixed by ``seed``), each covering several domains."""
    funcs = sorted(CATALOGUE, key=lambda f: f.name)
    random.Random(seed).shuffle(funcs)
    k = max(1, round(len(funcs) * test_fraction))
    return funcs[k:], funcs[:k]


def _render(rng: random.Random, fn: Function) -> tuple[str, dict]:
    values = {p.name: rng.choice(p.values) for p in fn.params if p.required}
    text = rng.choice(fn.templates).format(**values)
    for p in fn.params:
        if not p.required and rng.random() < 0.4:
            values[p.name] = rng.choice(p.values)
            text = text.rstrip(".?") + p.clause.format(value=values[p.name]) + text[-1]
    return text, {"name": fn.name, "parameters": values}


def _answer(calls: list[dict]) -> str:
    import json

    return (
        f"<think>{THOUGHT}</think>\n<tool_call>\n"
        + "\n".join(json.dumps(c) for c in calls)
        + "\n</tool_call>"
    )


def generate_split(
    functions: list[Function],
    n: int,
    seed: int,
    *,
    parallel: float = 0.2,
    no_call: float = 0.15,
    distractors: int = 1,
) -> list[ToolSample]:
    """``n`` samples over ``functions``: single calls, two-call (parallel) requests, and no-call turns."""
    if not functions:
        raise ValueError("generate_split needs at least one function")
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        kind = rng.random()
        if kind < no_call:
            shown = rng.sample(functions, min(len(functions), 1 + distractors))
            request, reply = rng.choice(SMALL_TALK)
            truth = f"<think>{NO_CALL_THOUGHT}</think>\n<response>{reply}</response>"
            samples.append(ToolSample([f.schema() for f in shown], request, truth))
            continue
        count = 2 if kind < no_call + parallel else 1
        called = [rng.choice(functions) for _ in range(count)]
        texts, calls = zip(*(_render(rng, fn) for fn in called))
        others = [f for f in functions if f not in called]
        shown = list({f.name: f for f in called}.values()) + rng.sample(others, min(len(others), distractors))
        rng.shuffle(shown)
        request = " Also, ".join(t if i == 0 else t[0].lower() + t[1:] for i, t in enumerate(texts))
        samples.append(ToolSample([f.schema() for f in shown], request, _answer(list(calls)), list(calls)))
    return samples
