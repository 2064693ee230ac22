"""BFCL-v3 worker. Runs inside the BFCL environment (`make setup-bfcl`), never in the trainer's process.

Reads one JSON request per line on stdin and answers each with one JSON line on stdout, so a caller may keep it
running for a whole evaluation. Requests, by ``op``:

* ``ast`` (the default): {"id", "category", "function", "model_output", "possible_answer"} ->
  {"id", "valid", "error", "error_type"}, BFCL's own ``ast_checker`` (bfcl-eval 2025.6.8).
* ``start``: {"id", "category", "initial_config", "involved_classes"} -> {"id", "methods"}: registers a
  multi-turn entry and lists the public methods of its API classes (what a call may name).
* ``execute``: {"id", "calls": [{"name", "arguments"}]} -> {"id", "calls": [str | None], "results": [str]}: runs
  one step of model calls in the entry's simulated environment (BFCL's ``execute_multi_turn_func_call``, whose
  instances keep their state across the steps and turns of the entry) and returns the calls as BFCL strings,
  None for a call that was refused (it names no method of the entry, or its arguments are not a mapping).
* ``check``: {"id", "decoded": [turn][step][call str], "ground_truth": [turn][call str]} ->
  {"id", "valid", "error_type", "error"}: BFCL's ``multi_turn_checker`` on the whole entry.

BFCL executes a call by ``eval`` of its text. Here the text is built by ``call_text`` from a method name that
must be one of the entry's API methods and from JSON values written as Python literals, so nothing but those
methods can run; a call naming anything else gets BFCL's own error text without being evaluated, and it is not
among the calls the checker replays (BFCL's checker ``eval``s every call text it is given).
"""

import json
import sys
import types

# A prompting-mode model config: function names are compared as written (no underscore-to-dot mapping).
MODEL_NAME = "gpt-4o-2024-11-20"


def load_ast_checker():
    """BFCL's ``ast_checker``, imported without BFCL's model registry.

    ``ast_checker`` reads one thing from ``bfcl_eval.constants.model_config``: ``MODEL_CONFIG_MAPPING[model]
    .underscore_to_dot``. That module builds the handler of every hosted model and so imports every vendor SDK
    (3.3 s of a 4-5 s scoring call). We register, in its place, a module holding just our model's entry with
    the value the real registry gives it (False; tests/test_bfcl.py checks it against the real registry). The
    checker itself is BFCL's code, unchanged.
    """
    registry = types.ModuleType("bfcl_eval.constants.model_config")
    registry.MODEL_CONFIG_MAPPING = {MODEL_NAME: types.SimpleNamespace(underscore_to_dot=False)}
    sys.modules.setdefault("bfcl_eval.constants.model_config", registry)
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker


def check_ast(item: dict) -> dict:
    try:
        verdict = load_ast_checker()(
            item["function"],
            item["model_output"],
            item["possible_answer"],
            "Python",
            item["category"],
            MODEL_NAME,
        )
        return {
            "valid": bool(verdict["valid"]),
            "error": verdict.get("error", []),
            "error_type": verdict.get("error_type", ""),
        }
    except Exception as exc:  # a checker crash on odd output counts as invalid, with the reason kept
        return {"valid": False, "error": [f"{type(exc).__name__}: {exc}"], "error_type": "checker_exception"}


def call_text(name: str, arguments: dict) -> str:
    """``name(key=literal, ...)``: the form BFCL's multi-turn ground truth and executor use."""
    return f"{name}(" + ", ".join(f"{key}={value!r}" for key, value in arguments.items()) + ")"


class MultiTurn:
    """The multi-turn entries of one evaluation: their configs, and BFCL's executor and checker."""

    def __init__(self):
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

        self.utils = multi_turn_utils
        self.entries: dict[str, dict] = {}

    def _execute(self, entry: dict, calls: list[str]) -> list[str]:
        results, _ = self.utils.execute_multi_turn_func_call(
            calls,
            entry["initial_config"],
            entry["involved_classes"],
            MODEL_NAME,
            entry["id"],
            long_context="long_context" in entry["category"],
            is_evaL_run=False,
        )
        return results

    def start(self, request: dict) -> dict:
        import importlib
        import inspect

        methods = set()
        for class_name in request["involved_classes"]:
            module = importlib.import_module(self.utils.CLASS_FILE_PATH_MAPPING[class_name])
            methods |= {n for n, _ in inspect.getmembers(getattr(module, class_name), inspect.isfunction)}
        entry = dict(request, methods=sorted(m for m in methods if not m.startswith("_")))
        self.entries[request["id"]] = entry
        self._execute(entry, [])  # creates the instances with the entry's initial state
        return {"methods": entry["methods"]}

    def execute(self, request: dict) -> dict:
        entry = self.entries[request["id"]]
        texts, results, runnable = [], [None] * len(request["calls"]), []
        for i, call in enumerate(request["calls"]):
            name, arguments = call.get("name"), call.get("arguments")
            valid = isinstance(name, str) and name in entry["methods"] and isinstance(arguments, dict)
            valid = valid and all(isinstance(k, str) and k.isidentifier() for k in arguments)
            if valid:
                texts.append(call_text(name, arguments))
                runnable.append(i)
            else:
                texts.append(None)  # never text: BFCL's checker would eval it when it replays the calls
                results[i] = f"Error during execution: name {name!r} is not defined"
        for i, result in zip(runnable, self._execute(entry, [texts[i] for i in runnable])):
            results[i] = result
        return {"calls": texts, "results": results}

    def check(self, request: dict) -> dict:
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

        entry = self.entries[request["id"]]
        try:
            verdict = multi_turn_checker(
                request["decoded"], request["ground_truth"], entry, entry["category"], MODEL_NAME
            )
        except Exception as exc:  # as BFCL's runner: a crash on the model's calls fails the entry
            return {
                "valid": False,
                "error_type": "checker_exception",
                "error": f"{type(exc).__name__}: {exc}",
            }
        return {
            "valid": bool(verdict["valid"]),
            "error_type": verdict.get("error_type", ""),
            "error": str(verdict.get("error_message", ""))[:500],
        }


def main() -> None:
    multi_turn = None
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op", "ast")
        if op == "ast":
            out = check_ast(request)
        else:
            multi_turn = multi_turn or MultiTurn()
            out = getattr(multi_turn, op)(request)
        print(json.dumps({"id": request["id"], **out}, default=str), flush=True)


if __name__ == "__main__":
    main()
