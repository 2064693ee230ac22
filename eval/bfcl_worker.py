"""BFCL-v3 AST checking worker. Runs inside the BFCL environment (`make setup-bfcl`), never in the trainer's.

Reads one JSON object per line on stdin: {"id", "category", "function", "model_output", "possible_answer"}, and
writes one per line on stdout: {"id", "valid", "error", "error_type"}. The verdict is BFCL's own
``ast_checker`` (bfcl-eval 2025.6.8); this file only moves data in and out of it.
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


def main() -> None:
    ast_checker = load_ast_checker()
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            verdict = ast_checker(
                item["function"],
                item["model_output"],
                item["possible_answer"],
                "Python",
                item["category"],
                MODEL_NAME,
            )
            out = {
                "valid": bool(verdict["valid"]),
                "error": verdict.get("error", []),
                "error_type": verdict.get("error_type", ""),
            }
        except Exception as exc:  # a checker crash on odd output counts as invalid, with the reason kept
            out = {
                "valid": False,
                "error": [f"{type(exc).__name__}: {exc}"],
                "error_type": "checker_exception",
            }
        print(json.dumps({"id": item["id"], **out}, default=str), flush=True)


if __name__ == "__main__":
    main()
