"""Math reasoning (paper §4.2): correctness + length rewards, and the GSM8K three-reward recipe.

Rewards of the paper's recipe (``recipe: boxed``; docs/paper-notes.md §6.2):

* ``correctness`` in {0, 1}: the final answer equals the reference. The paper does not name its extractor or
  verifier; we decide: the final answer is the content of the **last** top-level ``\\boxed{}`` (balanced braces;
  ``\\fbox{}`` too), or, when there is no box, the text after the last ``<answer>`` up to ``</answer>`` (the
  GSM8K recipe's tag); no final answer scores 0. Equality is decided by ``math-verify`` (reference parsed as
  ``$answer$``, prediction as ``\\boxed{prediction}``), after two exact fast paths (no sympy, microseconds):
  the two strings are equal once insignificant whitespace, surrounding ``$``, ``\\left``/``\\right``, a trailing period and
  ``\\dfrac``/``\\tfrac`` are normalised (-> 1), or both are plain decimal numbers (-> compared exactly; equal
  -> 1, different integers -> 0, different decimals go on to math-verify, which rounds). Answers longer than
  ``MAX_ANSWER_CHARS`` score 0.
* ``length`` in {0, 1}: 1 iff the completion has at most ``length_limit`` tokens (EOS included, as the rollout
  counts; the paper does not say how it counts). ``conditioned_length: true`` gives the paper's R~_length
  (Eq. 8): the component is declared ``condition_on="correctness", threshold=1.0`` and the shared
  :class:`~gdpo.rewards.RewardSet` gates it.

Prompt: the paper says only "original DeepSeek-R1 prompt format". We use DeepSeek-R1's published usage
recommendation for math: no system prompt, the user turn is the problem followed (on a new line) by "Please
reason step by step, and put your final answer within \\boxed{}."

**Time limit of math-verify.** math-verify's own timeouts use ``signal.alarm``, which fails outside the main
thread and cannot interrupt code on other threads. So every math-verify call runs with its timeouts disabled in
a small pool of persistent worker processes (plain ``subprocess`` children that import only math-verify, so
they also work from daemonic worker processes and from threads), talking JSON lines over pipes. Each call has a
deadline (``VERIFY_TIMEOUT_S``, 5 s like math-verify's default, measured from sending the request); a worker
that misses it is killed and replaced at once, and the call scores 0. Verdicts are cached by (reference,
answer, timeout), timeouts included, so a repeated pathological answer costs one deadline. The pool grows on
demand up to ``GDPO_MATH_VERIFY_WORKERS`` (default 2) workers per process; a forked child starts its own.
A worker that cannot start (math-verify missing) raises :class:`MathVerifyUnavailable`: an environment error,
not a 0 reward. Everything that depends on the input never raises.

GSM8K three-reward recipe (``recipe: gsm8k3``; docs/paper-notes.md §6.3), in this order, weights 1:
``correctness`` (extracted string == reference string), ``integer`` (extracted string is ASCII digits only),
``format`` (the completion, outer whitespace stripped, is ``<think>…</think>\\n<answer>…</answer>`` with
``<answer>`` and ``</answer>`` once each). Extraction: text after the last ``<answer>`` up to the next
``</answer>``, stripped; with no ``<answer>`` the whole completion up to any ``</answer>``. The system prompt
:data:`GSM8K_SYSTEM_PROMPT` is written in our own words with the same instructions as the official recipe's.

Task ``math`` options (``data.options``): ``source`` (``synthetic`` | ``gsm8k`` | ``math`` | ``deepscaler`` with
``path``), ``recipe`` (``boxed`` | ``gsm8k3``), ``conditioned_length``, ``length_limit`` (40 tokens for
synthetic, 4,000 otherwise), ``length_weight``, ``num_train``, ``num_test``, ``demo_noise``,
``num_demonstrations``. Splits: synthetic train/test (disjoint, fixed); gsm8k train/test; math = MATH train
(7,500) / MATH500; deepscaler = DeepScaleR-Preview / MATH500 (the paper's benchmarks run through
``eval.math_bench``). ``num_train``/``num_test`` keep the first rows in file order.

Demonstrations (tiny warm start): synthetic problems with their short step-by-step solutions. With
``demo_noise`` p, each demonstration independently has a slip in its last step (wrong boxed answer) with
probability p/2 and 4-6 redundant check lines (about 47-85 tokens, over the default 40-token limit; clean
solutions are 13-32) with probability p/2, so that both correctness and length vary after the warm start. In the
gsm8k3 recipe the broken share breaks the format instead. Real sources use their reference solutions (p: the
final answer is dropped).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from functools import lru_cache, partial
from typing import Any

from gdpo.data.math_data import last_boxed, render_synthetic_solution
from gdpo.rewards import RewardComponent, RewardSet
from gdpo.tasks import Task, register_task
from gdpo.tasks.options import task_options

__all__ = [
    "GSM8K_SYSTEM_PROMPT",
    "MAX_ANSWER_CHARS",
    "R1_INSTRUCTION",
    "VERIFY_TIMEOUT_S",
    "MathVerifyUnavailable",
    "boxed_messages",
    "canonical_answer",
    "correctness_reward",
    "extract_final_answer",
    "gsm8k_correctness_reward",
    "gsm8k_extract_answer",
    "gsm8k_format_reward",
    "gsm8k_integer_reward",
    "gsm8k_messages",
    "length_reward",
    "math_rewards",
    "shutdown_verifier",
]

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GSM8K_SYSTEM_PROMPT = """Solve the math problem by thinking it through step by step. The final answer is an integer.
Reply in exactly this format:
<think>your step-by-step reasoning</think>
<answer>the final answer, as an integer</answer>
Notes:
1. Do all your reasoning inside <think> </think>.
2. Always give the final answer inside <answer> </answer>.
3. The final answer must be an integer."""

VERIFY_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 120.0  # a cold worker imports sympy; on a loaded 2-core machine that can take a while
MAX_ANSWER_CHARS = 1000
CACHE_SIZE = 65536


class MathVerifyUnavailable(RuntimeError):
    """The math-verify worker could not start (an environment problem, not a property of the answer)."""


# --------------------------------------------------------------------------------------------------
# Final-answer extraction and the exact fast paths
# --------------------------------------------------------------------------------------------------


def extract_final_answer(completion: str) -> str | None:
    """The last top-level ``\\boxed{}`` content, else the last ``<answer>`` tag's content, else None."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    start = completion.rfind("<answer>")
    if start < 0:
        return None
    return completion[start + len("<answer>") :].split("</answer>", 1)[0].strip()


# Whitespace next to a non-word character carries no meaning in LaTeX math; between two word characters ("1 2",
# "\text{a b}") it may, so it stays and such answers go to math-verify.
_SPACE = re.compile(r"(?<=\W)\s+|\s+(?=\W)")
_SIZING = re.compile(r"\\(?:left|right)(?![A-Za-z])")  # \left( but not \leftarrow
_LATEX_SPACE = re.compile(r"\\[,;:! ]|~")  # typographic spaces: 1\,000 is 1000
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"[+-]?\d+")


def canonical_answer(text: str) -> str:
    """A spelling normalisation under which equal strings are certainly equal answers."""
    text = text.strip().strip("$").strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SIZING.sub("", text)
    text = _LATEX_SPACE.sub("", text)
    text = _SPACE.sub("", text)
    return text[:-1] if text.endswith(".") else text


def _fast_verdict(gold: str, pred: str) -> float | None:
    """1.0/0.0 where the answer is decided without math-verify, else None."""
    g, p = canonical_answer(gold), canonical_answer(pred)
    if not p:
        return 0.0
    if g == p:
        return 1.0
    if _DECIMAL.fullmatch(g) and _DECIMAL.fullmatch(p):
        try:
            if Decimal(g) == Decimal(p):
                return 1.0
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            return None
        if _INTEGER.fullmatch(g) and _INTEGER.fullmatch(p):
            return 0.0
    return None


# --------------------------------------------------------------------------------------------------
# math-verify in worker processes with a per-call deadline
# --------------------------------------------------------------------------------------------------

# The worker imports math-verify only (not this package, which pulls in torch): fast to start, small.
_WORKER_SOURCE = r"""
import json, logging, sys
try:
    from math_verify import parse, verify
except Exception as exc:
    sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
    sys.stdout.flush()
    sys.exit(1)
logging.disable(logging.CRITICAL)  # math-verify warns about the disabled timeouts; the parent enforces them
golds = {}

def gold_of(text):
    if text not in golds:
        if len(golds) > 20000:
            golds.clear()
        golds[text] = parse("$" + text + "$", parsing_timeout=None)
    return golds[text]

sys.stdout.write('{"ready": true}\n')
sys.stdout.flush()
for line in sys.stdin:
    try:
        gold, pred = json.loads(line)
        ok = verify(gold_of(gold), parse("\\boxed{" + pred + "}", parsing_timeout=None), timeout_seconds=None)
        reply = "1" if ok else "0"
    except Exception:
        reply = "0"
    sys.stdout.write(reply + "\n")
    sys.stdout.flush()
"""


class _Worker:
    """One math-verify process; ``ask`` sends one request and waits for the verdict until a deadline."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the trainer, not to its helpers
        )
        self.buffer = b""
        self.ready = False

    def _readline(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def ensure_ready(self) -> None:
        if self.ready:
            return
        try:
            status = json.loads(self._readline(time.monotonic() + STARTUP_TIMEOUT_S))
        except (TimeoutError, EOFError, ValueError) as exc:
            raise MathVerifyUnavailable(
                f"the math-verify worker did not start ({type(exc).__name__}; exit code {self.proc.poll()})"
            ) from None
        if "error" in status:
            raise MathVerifyUnavailable(
                f"the math-verify worker cannot import math_verify: {status['error']}"
            )
        self.ready = True

    def ask(self, gold: str, pred: str, timeout: float) -> float:
        self.proc.stdin.write((json.dumps([gold, pred]) + "\n").encode())
        self.proc.stdin.flush()
        return 1.0 if self._readline(time.monotonic() + timeout).strip() == b"1" else 0.0

    def detach(self) -> None:
        """Close this process's ends of the pipes (in a forked child: the parent still owns the worker)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.detach()


class _Pool:
    """Up to ``size`` workers, created on demand; a call takes an idle one or waits for one."""

    def __init__(self, size: int):
        self.size, self.pid = max(1, size), os.getpid()
        self.idle: list[_Worker] = []
        self.count = 0
        self.closed = False
        self.cond = threading.Condition()

    def acquire(self) -> _Worker:
        with self.cond:
            while not self.idle and self.count >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.count += 1
        try:
            return _Worker()
        except OSError as exc:
            self.drop()
            raise MathVerifyUnavailable(f"cannot start a math-verify worker: {exc}") from exc
        except BaseException:
            self.drop()
            raise

    def give_back(self, worker: _Worker) -> None:
        """Return a healthy worker."""
        with self.cond:
            if not self.closed:
                self.idle.append(worker)
                self.cond.notify()
                return
        worker.kill()

    def replace(self, worker: _Worker) -> None:
        """Kill a worker that is stuck or dead and start its successor now (it imports while we move on)."""
        worker.kill()
        try:
            successor = _Worker()
        except OSError:
            self.drop()
            return
        self.give_back(successor)

    def drop(self) -> None:
        """Forget a worker slot (its worker failed to start or was killed without successor)."""
        with self.cond:
            self.count -= 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            workers, self.idle, self.closed = self.idle, [], True
        for w in workers:
            w.kill() if os.getpid() == self.pid else w.detach()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.pid != os.getpid():  # forked: the parent's workers are not ours
            _POOL.close()
            _POOL = None
        if _POOL is None:
            size = os.environ.get("GDPO_MATH_VERIFY_WORKERS", "2")
            if not size.isdigit() or int(size) < 1:
                raise MathVerifyUnavailable(
                    f"GDPO_MATH_VERIFY_WORKERS must be a positive integer, got {size!r}"
                )
            _POOL = _Pool(int(size))
        return _POOL


def shutdown_verifier() -> None:
    """Stop this process's math-verify workers (they restart on the next call)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()
    _verify_cached.cache_clear()


atexit.register(shutdown_verifier)


@lru_cache(maxsize=CACHE_SIZE)
def _verify_cached(gold: str, pred: str, timeout: float) -> float:
    pool = _pool()
    worker = pool.acquire()
    try:
        worker.ensure_ready()
    except MathVerifyUnavailable:
        worker.kill()
        pool.drop()
        raise
    try:
        verdict = worker.ask(gold, pred, timeout)
    except (TimeoutError, EOFError, OSError, ValueError):
        pool.replace(worker)  # stuck on this input, or died of it: the answer scores 0
        return 0.0
    pool.give_back(worker)
    return verdict


# --------------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------------


def after_think(completion: str) -> str | None:
    """The text a DeepScaleR-style scorer reads: what follows ``</think>`` (up to a second one, as their
    ``split("</think>")[1]``), or None when the completion never closes its thinking."""
    parts = completion.split("</think>", 2)
    return parts[1] if len(parts) > 1 else None


def correctness_reward(
    completion: str, answer: str, *, timeout: float | None = None, answer_after_think: bool = False
) -> float:
    """1.0 if the completion's final answer equals ``answer`` (see the module docstring), else 0.0.

    ``answer_after_think``: the answer is read only from :func:`after_think`'s text, so a ``\boxed{}`` inside an
    unfinished or finished ``<think>`` does not count (DeepScaleR-style scorers); without it, from the whole
    completion. Never raises for any input; returns within about ``timeout`` seconds (default
    ``VERIFY_TIMEOUT_S``) of math-verify work, from any thread or process.
    """
    try:
        if answer_after_think:
            completion = after_think(completion)
            if completion is None:
                return 0.0
        pred = extract_final_answer(completion)
        gold = str(answer).strip()
        if not pred or not gold or len(pred) > MAX_ANSWER_CHARS:
            return 0.0
        fast = _fast_verdict(gold, pred)
        if fast is not None:
            return fast
        return _verify_cached(gold, pred, float(VERIFY_TIMEOUT_S if timeout is None else timeout))
    except MathVerifyUnavailable:
        raise
    except Exception:
        return 0.0


def length_reward(num_tokens: int, limit: int) -> float:
    """1.0 iff the completion has at most ``limit`` tokens."""
    return 1.0 if num_tokens <= limit else 0.0


def gsm8k_extract_answer(completion: str) -> str:
    """Text after the last ``<answer>`` up to the next ``</answer>``, stripped (the whole text without a tag)."""
    return completion.split("<answer>")[-1].split("</answer>", 1)[0].strip()


def gsm8k_correctness_reward(completion: str, answer: str) -> float:
    """1.0 iff the extracted answer is exactly the reference string (no math equivalence)."""
    try:
        return 1.0 if gsm8k_extract_answer(completion) == str(answer).strip() else 0.0
    except Exception:
        return 0.0


_ASCII_DIGITS = re.compile(r"[0-9]+")
_GSM8K_FORMAT = re.compile(r"<think>.*?</think>\n<answer>.*?</answer>", re.DOTALL)


def gsm8k_integer_reward(completion: str) -> float:
    """1.0 iff the extracted answer is digits only (so negatives, decimals and "1,080" score 0)."""
    try:
        return 1.0 if _ASCII_DIGITS.fullmatch(gsm8k_extract_answer(completion)) else 0.0
    except Exception:
        return 0.0


def gsm8k_format_reward(completion: str) -> float:
    """1.0 iff the stripped completion is ``<think>…</think>\\n<answer>…</answer>`` with one answer tag pair."""
    try:
        text = completion.strip()
        if text.count("<answer>") != 1 or text.count("</answer>") != 1:  # checked first: bounds the regex
            return 0.0
        return 1.0 if _GSM8K_FORMAT.fullmatch(text) else 0.0
    except Exception:
        return 0.0


# Reward components read a rollout: the prompt row's fields + ``completion`` + ``num_tokens``.
def _correctness(rollout, answer_after_think: bool = False) -> float:
    return correctness_reward(rollout["completion"], rollout["answer"], answer_after_think=answer_after_think)


def _length(rollout) -> float:
    return length_reward(int(rollout["num_tokens"]), int(rollout["length_limit"]))


def _gsm8k_correctness(rollout) -> float:
    return gsm8k_correctness_reward(rollout["completion"], rollout["answer"])


def _gsm8k_integer(rollout) -> float:
    return gsm8k_integer_reward(rollout["completion"])


def _gsm8k_format(rollout) -> float:
    return gsm8k_format_reward(rollout["completion"])


def math_rewards(
    recipe: str = "boxed",
    *,
    conditioned_length: bool = False,
    length_weight: float = 1.0,
    answer_after_think: bool = False,
):
    """The reward components of a recipe: boxed = correctness, length; gsm8k3 = correctness, integer, format.
    ``answer_after_think``: boxed correctness reads only what follows ``</think>`` (:func:`correctness_reward`)."""
    if recipe == "gsm8k3":
        return RewardSet(
            [
                RewardComponent("correctness", _gsm8k_correctness),
                RewardComponent("integer", _gsm8k_integer),
                RewardComponent("format", _gsm8k_format),
            ]
        )
    if recipe != "boxed":
        raise ValueError(f"unknown math recipe {recipe!r}; known: ['boxed', 'gsm8k3']")
    length = RewardComponent(
        "length",
        _length,
        weight=float(length_weight),
        condition_on="correctness" if conditioned_length else None,
        threshold=1.0,
    )
    correctness = partial(_correctness, answer_after_think=answer_after_think)
    return RewardSet([RewardComponent("correctness", correctness), length])


# --------------------------------------------------------------------------------------------------
# Prompts, demonstrations and the task
# --------------------------------------------------------------------------------------------------


def boxed_messages(problem: str) -> list[dict]:
    """DeepSeek-R1's recommended math prompt: no system turn, the problem then the boxed-answer instruction."""
    return [{"role": "user", "content": f"{problem.strip()}\n{R1_INSTRUCTION}"}]


def gsm8k_messages(problem: str) -> list[dict]:
    """The GSM8K recipe's prompt: its system prompt, then the question as the user turn."""
    return [{"role": "system", "content": GSM8K_SYSTEM_PROMPT}, {"role": "user", "content": problem.strip()}]


def _row(item: dict, recipe: str, length_limit: int) -> dict[str, Any]:
    messages = gsm8k_messages(item["problem"]) if recipe == "gsm8k3" else boxed_messages(item["problem"])
    row = {"messages": messages, "answer": item["answer"], "length_limit": length_limit}
    row.update({k: item[k] for k in ("problem", "source", "id") if k in item})
    return row


def _synthetic_demo(rng: random.Random, item: dict, recipe: str, noise: float) -> str:
    delta = rng.choice([-2, -1, 1, 2]) if rng.random() < noise / 2 else 0
    if recipe == "boxed":
        checks = rng.randint(4, 6) if rng.random() < noise / 2 else 0
        return render_synthetic_solution(item, final_delta=delta, extra_checks=checks)
    body, _, boxed = render_synthetic_solution(item, final_delta=delta).rpartition("\n")
    final = last_boxed(boxed)
    if rng.random() < noise / 2:  # a broken layout: the format reward has something to teach
        return rng.choice(
            [
                f"<think>{body}</think><answer>{final}</answer>",
                f"{body}\n<answer>{final}</answer>",
                f"<think>{body}</think>\n\\boxed{{{final}}}",
                f"<think>{body}</think>\n<answer>{final}</answer> done",
            ]
        )
    return f"<think>{body}</think>\n<answer>{final}</answer>"


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _solution_demo(rng: random.Random, item: dict, recipe: str, noise: float) -> str | None:
    """A demonstration from a real item's reference solution (its final answer dropped with probability noise)."""
    solution = item.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        return None
    solution = _CALCULATOR.sub("", solution)  # GSM8K's <<48/2=24>> calculator annotations are not prose
    drop = rng.random() < noise
    if recipe == "gsm8k3":
        return f"<think>{solution.strip()}</think>" + ("" if drop else f"\n<answer>{item['answer']}</answer>")
    if "\\boxed" not in solution:
        solution = f"{solution.strip()}\n\\boxed{{{item['answer']}}}"
    return solution.replace("\\boxed", "") if drop else solution


def _load_items(source: str, path: str | None, num_train, num_test) -> tuple[list[dict], list[dict]]:
    from gdpo.data import math_data

    if source == "synthetic":
        return (
            math_data.synthetic_problems(num_train or 2000, "train", seed=0),  # the data is fixed
            math_data.synthetic_problems(num_test or 200, "test", seed=0),
        )
    if source == "gsm8k":
        train, test = math_data.load_gsm8k("train"), math_data.load_gsm8k("test")
    elif source == "math":
        train, test = math_data.load_math_train(), math_data.load_math500()
    else:
        train = math_data.load_deepscaler(path or math_data.HUB_DEFAULTS["deepscaler"])
        test = math_data.load_math500()
    return train[:num_train], test[:num_test]


def task_length_limit(options: dict) -> int:
    """The length limit (tokens) the task rewards with, given its ``data.options``: 40 for the synthetic
    source, 4000 otherwise, unless ``length_limit`` is set. The evaluation's Exceed reads it here too."""
    return task_options("math", options).length_limit


@register_task("math")
def build_math_task(options: dict, seed: int) -> Task:
    """The ``math`` task (see the module docstring for the options)."""
    opts = task_options("math", options)
    source, path, recipe, length_limit = opts.source, opts.path, opts.recipe, opts.length_limit
    conditioned, length_weight, noise = opts.conditioned_length, opts.length_weight, opts.demo_noise
    num_train, num_test, num_demos = opts.num_train, opts.num_test, opts.num_demonstrations

    train_items, test_items = _load_items(source, path, num_train, num_test)
    train = [_row(item, recipe, length_limit) for item in train_items]
    test = [_row(item, recipe, length_limit) for item in test_items]
    rng = random.Random(seed)
    demos = []
    for _ in range(num_demos if train_items else 0):
        index = rng.randrange(len(train_items))
        item = train_items[index]
        if source == "synthetic":
            completion = _synthetic_demo(rng, item, recipe, noise)
        else:
            completion = _solution_demo(rng, item, recipe, noise)
        if completion is not None:
            demos.append((train[index]["messages"], completion))
    rewards = math_rewards(
        recipe,
        conditioned_length=conditioned,
        length_weight=length_weight,
        answer_after_think=opts.answer_after_think,
    )
    return Task("math", train, test, rewards, demos)
