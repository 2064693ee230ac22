"""Benchmark decontamination on crafted training rows and benchmark items."""

from __future__ import annotations

from eval.decontaminate import MIN_CHARS, TrainingSet, decontaminate, normalise

PROBLEM = "Let $f(x) = x^2 + 3x$. Find the sum of all real $x$ such that $f(f(x)) = 0$."
ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": PROBLEM
                + " Please reason step by step, and put your final answer within \\boxed{}.",
            },
        ],
        "id": "deepscaler/17",
    },
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
]


def test_normalise_folds_case_width_and_punctuation():
    assert normalise("  Ｆｉｎｄ  the SUM,\tof   x_1!  ") == "find the sum of x 1"
    assert normalise("$f(f(x)) = 0$") == "f f x 0"


def test_a_statement_inside_a_training_prompt_is_dropped_and_counted():
    training = TrainingSet(ROWS)
    items = [
        {"id": "math/1", "problem": "let F(x)=x^2+3x. find the SUM of all real x such that f(f(x))=0."},
        {"id": "math/2", "problem": "Let $f(x) = x^2 + 3x$. Find the product of all real $x$ with f(x) = 0."},
        {"id": "math/3", "problem": "what is 2+2"},  # short: only a whole user turn counts
        {"id": "math/4", "problem": "2 + 2"},  # short and inside a turn, but not the whole turn: kept
        {"id": "deepscaler/17", "problem": "An unrelated statement that shares the id of a training row."},
    ]
    kept, dropped = decontaminate(items, training, lambda item: item["problem"])
    assert dropped == ["math/1", "math/3", "deepscaler/17"]
    assert [item["id"] for item in kept] == ["math/2", "math/4"]
    assert len(normalise(items[0]["problem"])) >= MIN_CHARS > len(normalise(items[2]["problem"]))


def test_whole_words_only_and_nothing_dropped_without_a_training_set():
    training = TrainingSet(
        [{"messages": [{"role": "user", "content": "x" * 10 + " " + "longer words here " * 3}]}]
    )
    part_of_a_word = {"id": "a", "q": "xxxxx longer words here longer words here longer words here"}
    assert decontaminate([part_of_a_word], training, lambda item: item["q"]) == ([part_of_a_word], [])
    assert decontaminate([part_of_a_word], None, lambda item: item["q"]) == ([part_of_a_word], [])


def test_on_by_default_for_the_paper_presets_only():
    from eval.decontaminate import decontamination_wanted

    assert decontamination_wanted("paper-r1-7b", None) and not decontamination_wanted("tiny", None)
    assert not decontamination_wanted("paper-r1-7b", False) and decontamination_wanted("tiny", True)
