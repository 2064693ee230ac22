"""The experiments: per task a ``train.py``, configs and a ``reproduce.py`` built on the shared engine
:mod:`experiments.reproduce`. Run from the repository root as modules (``python -m
experiments.math.reproduce``), so that ``analysis`` and ``eval`` import as the packages they are."""
