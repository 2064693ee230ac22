"""``toy``: single-digit addition with two binary rewards, the trainer's smoke-test task.

Prompt: "Add 3 and 5." The required answer is ``<answer>8</answer>``.
Rewards: ``correct`` (the number inside the tags is the sum) and ``format`` (the whole completion is exactly one
``<answer>…</answer>`` block). Demonstrations for the warm start are deliberately noisy (a share with wrong sums,
a share with broken format) so that the warm-started model succeeds sometimes but not always: RL has signal on
both components. Not a paper task: it exists to exercise and test the trainer quickly on a CPU.
"""

from __future__ import annotations

import random
import re

from gdpo.rewards import RewardComponent, RewardSet
from gdpo.tasks import Task, register_task
from gdpo.tasks.options import task_options

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"^<answer>[^<>]*</answer>$")


def correct_reward(rollout) -> float:
    found = _ANSWER.findall(rollout["completion"])
    return 1.0 if found and found[-1].strip() == str(rollout["answer"]) else 0.0


def format_reward(rollout) -> float:
    return 1.0 if _FORMAT.match(rollout["completion"].strip()) else 0.0


def _prompt(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Add {a} and {b}."}], "answer": a + b}


def _demonstration(rng: random.Random, a: int, b: int, noise: float) -> str:
    total = a + b
    if rng.random() < noise:
        total = rng.randint(0, 18)  # a wrong (or accidentally right) sum
    if rng.random() < noise:
        return rng.choice(
            [f"{total}", f"answer {total}", f"<answer>{total}", f"<answer> {total} </answer> ok"]
        )
    return f"<answer>{total}</answer>"


@register_task("toy")
def build_toy_task(options: dict, seed: int) -> Task:
    opts = task_options("toy", options)
    noise, num_demos = opts.demo_noise, opts.num_demonstrations
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rng = random.Random(1234)  # the split is fixed, independent of the run seed
    rng.shuffle(pairs)
    train, test = pairs[:80], pairs[80:]
    demo_rng = random.Random(seed)
    demos = []
    for _ in range(num_demos):
        a, b = demo_rng.choice(train)
        demos.append((_prompt(a, b)["messages"], _demonstration(demo_rng, a, b, noise)))
    rewards = RewardSet(
        [RewardComponent("correct", correct_reward), RewardComponent("format", format_reward)]
    )
    return Task("toy", [_prompt(a, b) for a, b in train], [_prompt(a, b) for a, b in test], rewards, demos)
