"""Tool calling (the paper's §4.1): format + correctness rewards, GRPO / GRPO w/o std / GDPO.

python experiments/tool_calling/train.py --config experiments/tool_calling/configs/tiny.yaml algorithm.method=gdpo seed=1
"""

from gdpo.cli import main

if __name__ == "__main__":
    main(task="tool_calling")
