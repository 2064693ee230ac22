"""Train on the ``toy`` task (single-digit addition, rewards: correct + format), the trainer's smoke test.

python experiments/toy/train.py --config experiments/toy/configs/tiny.yaml algorithm.method=gdpo seed=1
"""

from gdpo.cli import main

if __name__ == "__main__":
    main(task="toy")
