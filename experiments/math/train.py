"""Math reasoning (the paper's §4.2): correctness + length (or correctness-conditioned length) rewards.

python experiments/math/train.py --config experiments/math/configs/tiny.yaml algorithm.method=gdpo seed=1
python experiments/math/train.py --config experiments/math/configs/tiny.yaml data.options.conditioned_length=true
"""

from gdpo.cli import main

if __name__ == "__main__":
    main(task="math")
