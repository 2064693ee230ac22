"""BFCL items are asked in the run's training layout: a BFCL prompt for a training row's tools and question is
that training row, whether the rows are the synthetic task's or read from ToolRL-style files."""

from __future__ import annotations

import pytest

from eval.bfcl import messages_for
from gdpo.data.synthetic_tools import generate_split, split_functions
from gdpo.tasks.tool_calling import render_system_prompt, render_user_turn, system_prompt_like


def as_bfcl_item(tools: list[dict], question: str) -> dict:
    """BFCL's item layout (functions with a dict of properties) for the same tools and question."""
    functions = [
        {
            "name": t["name"],
            "description": t["description"],
            "parameters": {"type": "dict", "properties": t["parameters"]},
        }
        for t in tools
    ]
    return {"id": "x", "function": functions, "question": [[{"role": "user", "content": question}]]}


@pytest.mark.parametrize("compact", [True, False])
def test_synthetic_rows_and_bfcl_prompts_differ_only_in_tools_and_question(compact):
    train_fns, _ = split_functions(seed=0)
    first, second = list(generate_split(train_fns, 2, seed=1))
    training_system = render_system_prompt(first.tools, compact=compact)  # a training row's system turn
    style = system_prompt_like(training_system)
    for sample in (first, second):
        row = [
            {"role": "system", "content": render_system_prompt(sample.tools, compact=compact)},
            {"role": "user", "content": render_user_turn(sample.request)},
        ]
        assert messages_for(as_bfcl_item(sample.tools, sample.request), style) == row
    assert first.tools != second.tools


# A system turn laid out as ToolRL's (paper App. B), worded differently from ours: its words must be kept.
TOOLRL_LIKE = """You are a helpful multi-turn dialogue assistant capable of leveraging tool calls to solve user tasks.

**Available Tools**
In your response, you can use the following tools:
{tools}

**Steps for Each Turn**
1. **Think:** Recall relevant context and analyze the current user goal.
2. **Decide on Tool Usage:** If a tool is needed, specify the tool and its parameters.

**Output Format**
<think> Your thoughts and reasoning </think>
<tool_call>
{{"name": "Tool name", "parameters": {{"Parameter name": "Parameter content"}}}}
</tool_call>"""


def test_toolrl_wording_is_kept_and_only_the_tools_change():
    train_fns, _ = split_functions(seed=0)
    first, second = list(generate_split(train_fns, 2, seed=1))
    from gdpo.tasks.tool_calling import render_tools

    training_system = TOOLRL_LIKE.format(tools=render_tools(first.tools))
    style = system_prompt_like(training_system)
    assert style(first.tools) == training_system
    system, user = messages_for(as_bfcl_item(second.tools, second.request), style)
    assert system["content"] == TOOLRL_LIKE.format(tools=render_tools(second.tools))
    assert user["content"] == f"**Dialogue Records History**\n<user> {second.request} </user>"
    with pytest.raises(ValueError, match="without a numbered tool list"):
        system_prompt_like("You are a helpful assistant.")
