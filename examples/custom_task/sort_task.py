"""A task of your own, end to end: sort three digits, scored by three rewards, one conditioned on another.

This file is the code of the walk-through in ``docs/add-a-task.md``; ``tests/test_example_task.py`` runs it, so
the guide and the code cannot drift apart. Run it like any task script:

    python examples/custom_task/sort_task.py --config examples/custom_task/tiny.yaml algorithm.method=grpo
    python examples/custom_task/sort_task.py --config examples/custom_task/tiny.yaml algorithm.method=gdpo

and score a trained model on the test split with the same rewards (``gdpo.evaluate``'s options):

    python examples/custom_task/sort_task.py evaluate --config examples/custom_task/tiny.yaml
        --model runs/sort3/tiny/gdpo/seed0/final_model --out sort3-gdpo-eval.json

Prompt: "Sort 7 2 5." The wanted completion is ``<answer>2 5 7</answer>``.
Rewards, in this order, weight 1 each:

* ``correct`` in {0, 1}: the text of the last ``<answer>...</answer>`` block is the three digits in ascending
  order, separated by single spaces.
* ``format`` in {0, 1}: the completion (outer whitespace stripped) ends with its only ``<answer>`` block, which
  holds digits and spaces only; working lines before it are allowed.
* ``length`` in {0, 1}: 1 iff the completion has at most ``LENGTH_LIMIT`` tokens (EOS included, as the rollout
  counts them), and only where ``correct`` is 1: the conditioned reward of the paper's Eq. 8, declared with
  ``condition_on="correct"``. Without the condition, a short wrong answer would be paid for its length.

The demonstrations for the tiny model's warm start are deliberately imperfect (wrong orders, broken tags,
needless working lines), so that after the warm start every reward is sometimes 0 and sometimes 1 within a
group: the signal that RL needs.
"""

from __future__ import annotations

import random
import re
import sys

from gdpo.rewards import RewardComponent, RewardSet
from gdpo.tasks import Task, register_task

TASK_NAME = "sort3"
LENGTH_LIMIT = 12  # tokens; the clean answer takes 10 with the tiny model's tokenizer, the working lines 21

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"^(?:[^<>]*\n)?<answer>[0-9 ]+</answer>$")


def correct_reward(rollout) -> float:
    """1.0 if the last answer block is the sorted digits ("2 5 7"), else 0.0."""
    found = _ANSWER.findall(rollout["completion"])
    return 1.0 if found and found[-1].strip() == rollout["answer"] else 0.0


def format_reward(rollout) -> float:
    """1.0 if the completion ends with its only answer block, holding digits and spaces only."""
    text = rollout["completion"].strip()
    once = text.count("<answer>") == 1 and text.count("</answer>") == 1
    return 1.0 if once and _FORMAT.match(text) else 0.0


def length_reward(rollout) -> float:
    """1.0 if the completion has at most LENGTH_LIMIT tokens; the RewardSet pays it only where correct is 1."""
    return 1.0 if rollout["num_tokens"] <= LENGTH_LIMIT else 0.0


def rewards() -> RewardSet:
    """The task's three reward components, in the order the logs and the [B, G, K] tensor use."""
    return RewardSet(
        [
            RewardComponent("correct", correct_reward),
            RewardComponent("format", format_reward),
            RewardComponent("length", length_reward, condition_on="correct", threshold=1.0),
        ]
    )


def prompt(digits: tuple[int, int, int]) -> dict:
    """One prompt row: the chat messages plus the field the rewards read (``answer``)."""
    shown = " ".join(map(str, digits))
    return {
        "messages": [{"role": "user", "content": f"Sort {shown}."}],
        "answer": " ".join(map(str, sorted(digits))),
    }


def demonstration(rng: random.Random, digits: tuple[int, int, int]) -> str:
    """A warm-start completion: right a little over half of the time, with independent slips."""
    order = sorted(digits)
    if rng.random() < 0.3:  # wrong order
        order = list(digits) if list(digits) != order else order[::-1]
    answer = " ".join(map(str, order))
    if rng.random() < 0.25:  # broken tags
        return rng.choice([answer, f"<answer>{answer}", f"answer {answer}", f"<answer>{answer}</answer> ok"])
    if rng.random() < 0.35:  # needless working lines: right format, over the length limit
        a, b, c = sorted(digits)
        return f"{a} then {b} then {c}\ncheck {a} {b} {c}\n<answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


@register_task(TASK_NAME)
def build_sort_task(options: dict, seed: int) -> Task:
    """The trainer calls this with the config's ``data.options`` (none here) and a seed for the demonstrations."""
    if options:
        raise ValueError(f"task {TASK_NAME!r} takes no data.options, got {sorted(options)}")
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    random.Random(1234).shuffle(triples)  # a fixed split, the same for every run seed
    train, test = triples[:800], triples[800:]
    demo_rng = random.Random(seed)
    demos = []
    for _ in range(2000):
        digits = demo_rng.choice(train)
        demos.append((prompt(digits)["messages"], demonstration(demo_rng, digits)))
    return Task(TASK_NAME, [prompt(d) for d in train], [prompt(d) for d in test], rewards(), demos)


if __name__ == "__main__":
    if sys.argv[1:2] == ["evaluate"]:  # score a trained model on the test split with the task's rewards
        from gdpo.evaluate import main as evaluate

        evaluate(sys.argv[2:])
    else:  # train: the shared trainer's command line, with this task
        from gdpo.cli import main as train

        train(task=TASK_NAME)
