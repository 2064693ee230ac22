"""Judging model-written programs: what the model is asked for, the program its answer holds, and the verdict of
each test, the program itself running only in ``gdpo.sandbox``.

* :mod:`gdpo.execution.programs`: the answer format (the instruction, and the program a completion holds).
* :mod:`gdpo.execution.judge`: test forms, the sandbox runs a program needs, the verdict of each test
  (``run_tests`` / ``run_tests_many``).
* ``gdpo/execution/harness.py``: the script the sandbox runs around a program (standard library only; never
  imported here, its text is sent to the sandbox).

The coding task (``gdpo.tasks.coding``) builds its rewards on the judge; the coding benchmarks
(``eval.code_bench``) score with the same judge.
"""
