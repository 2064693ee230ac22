"""Judging model-written programs; the programs themselves run only in ``gdpo.sandbox``.

``programs`` (the answer format: instruction, program extraction), ``judge`` (test forms, sandbox runs,
verdicts: ``run_tests`` / ``run_tests_many``), ``harness.py`` (the script run in the sandbox around a program).
"""
