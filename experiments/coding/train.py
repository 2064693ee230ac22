"""Coding (the paper's §4.3, Table 5): pass rate + conditioned length (2 objectives), + bug (3 objectives).

python experiments/coding/train.py --config experiments/coding/configs/tiny.yaml algorithm.method=gdpo seed=1
python experiments/coding/train.py --config experiments/coding/configs/tiny.yaml data.options.objectives=3
"""

from gdpo.cli import main

if __name__ == "__main__":
    main(task="coding")
