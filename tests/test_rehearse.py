"""experiments/rehearse.py's parts: the scale overrides leave a paper preset's method alone, the hub-schema files
read through the paper's loaders, the output checks find what is missing, a failure names its step. The
rehearsals themselves run in `make test-slow` (make rehearse-tool / -math / -code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.rehearse import (
    TASKS,
    check_outputs,
    main,
    rehearsal_arguments,
    write_toolrl,
)
from experiments.reproduce import StepFailed, config_path
from gdpo.config import TrainConfig, load_config, to_dict
from gdpo.trainer import plan_layout


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("task,preset", [(task, preset) for task, r in TASKS.items() for preset in r.presets])
def test_the_rehearsal_changes_only_the_scale_of_every_paper_preset(task, preset, tmp_path):
    config = config_path(TASKS[task].module, preset)
    paper = _flat(to_dict(load_config(TrainConfig, config)))
    argv = rehearsal_arguments(task, preset, tmp_path, Path("/models/smollm2"))
    overrides = argv[argv.index("--") + 1 :]
    rehearsed = load_config(TrainConfig, config, overrides)
    changed = {k for k, v in _flat(to_dict(rehearsed)).items() if paper[k] != v}
    assert changed <= {
        "model.name_or_path",
        "steps",
        "data.prompts_per_step",
        "rollout.max_new_tokens",
        "rollout.vllm_kv_cache_gib",
        "optim.zero_stage",
        "logging.sample_every",
        "data.options",  # the data files: the paper's loader, reading files of the hub schema
    }
    assert rehearsed.rollout.backend == "vllm" and rehearsed.optim.zero_stage == 3
    assert rehearsed.rollout.num_rollouts == paper["rollout.num_rollouts"]  # the preset's G
    assert plan_layout(rehearsed, 2).prompts_per_rank == 1  # 2 prompts over the 2 ranks
    for flag, value in (("--cpu-ranks", "2"), ("--backend", "vllm"), ("--seeds", "0"), ("--preset", preset)):
        assert argv[argv.index(flag) + 1] == value
    if changed & {"data.options"}:
        options = dict(rehearsed.data.options)
        assert {k: v for k, v in options.items() if k not in ("source", "path")} == {
            k: v for k, v in dict(paper["data.options"]).items() if k not in ("source", "path")
        }


def test_every_paper_preset_has_its_rehearsal():
    for rehearsal in TASKS.values():
        folder = config_path(rehearsal.module, rehearsal.presets[0]).parent
        assert set(rehearsal.presets) == {p.stem for p in folder.glob("paper-*.yaml")}


def test_toolrl_files_are_read_by_the_toolrl_loader_as_the_synthetic_rows_they_came_from(tmp_path):
    from gdpo.tasks import build_task

    folder = write_toolrl(tmp_path / "rlla_4k", train=6, test=3)
    synthetic = build_task("tool_calling", {"train_size": 6, "test_size": 3}, 0)
    read = build_task("tool_calling", {"source": str(folder)}, 0)
    assert len(read.train) == 6 and len(read.test) == 3
    by_truth = {row["ground_truth"]: row["messages"] for row in synthetic.train}
    assert {row["ground_truth"]: row["messages"] for row in read.train} == by_truth


def test_output_checks_name_what_a_paper_run_must_leave(tmp_path):
    found = check_outputs("tool", "paper-qwen2.5-1.5b", tmp_path)
    assert any(f.startswith("run gdpo: ") for f in found)
    assert any(f.startswith("evaluation of base: ") for f in found)
    assert f"tables and figures: no *.png in {tmp_path}" in found

    # A complete rehearsal's outputs, but one run trained on one rank only.
    for variant in TASKS["tool"].variants:
        run = tmp_path / "runs/tool_calling/paper-qwen2.5-1.5b" / variant / "seed0"
        (run / "final_model").mkdir(parents=True)
        (run / "final_model/config.json").write_text("{}")
        (run / "checkpoints/step_000002").mkdir(parents=True)
        (run / "checkpoints/step_000002/manifest.json").write_text("{}")
        gap = 0.9 if variant == "grpo" else 0.01  # a weight sync gone wrong in the GRPO run
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": k, "rollout/logprob_gap": gap}) + "\n" for k in (1, 2))
        )
        world = 1 if variant == "gdpo" else 2
        (run / "metadata.json").write_text(json.dumps({"world_size": world}))
        (run / "config.yaml").write_text("preset: paper-qwen2.5-1.5b\nbackend: vllm\nzero_stage: 3\n")
        (run / "eval").mkdir()
        (run / "eval/summary.json").write_text(
            json.dumps({"bfcl": {}, "synthetic": {}, "synthetic_sampled": {}})
        )
    (tmp_path / "base_eval").mkdir()
    (tmp_path / "base_eval/summary.json").write_text(json.dumps({"bfcl": {}, "synthetic": {}}))
    for name in ("t.csv", "t.md", "t.tex", "f.png", "f.pdf", "tool_calling.executed.ipynb"):
        (tmp_path / name).write_text("x")
    assert check_outputs("tool", "paper-qwen2.5-1.5b", tmp_path) == [
        "run grpo: step 1 rollout/logprob_gap 0.9, expected < 0.25",
        "run grpo: step 2 rollout/logprob_gap 0.9, expected < 0.25",
        "run gdpo: world size 1, expected 2",
        f"evaluation of base: no ['synthetic_sampled'] in {tmp_path / 'base_eval/summary.json'}",
    ]


def test_a_failed_rehearsal_names_its_step(tmp_path, monkeypatch, capsys):
    import experiments.rehearse as rehearse
    import experiments.tool_calling.reproduce as reproduction

    monkeypatch.setattr(rehearse.importlib.util, "find_spec", lambda name: object())  # as if vLLM were here
    monkeypatch.setattr(rehearse, "smollm2_135m_instruct", lambda: Path("/models/smollm2"))

    def failing(argv):
        assert argv[argv.index("--cpu-ranks") + 1] == "2"
        raise StepFailed("training gdpo/seed0", "torchrun exited with code 1 (its output: x/reproduce.log)")

    monkeypatch.setattr(reproduction, "main", failing)
    with pytest.raises(SystemExit) as exit_:
        main(["tool", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "REHEARSAL FAILED at step 'training gdpo/seed0': torchrun exited with code 1 (its output: x/reproduce.log)"
    )
    with pytest.raises(
        SystemExit, match=r"no paper preset 'tiny' for tool; its paper presets: \['paper-qwen2.5-1.5b'"
    ):
        main(["tool", "--preset", "tiny"])


def test_without_vllm_the_rehearsal_stops_at_its_first_step(tmp_path, monkeypatch, capsys):
    import experiments.rehearse as rehearse

    monkeypatch.setattr(rehearse.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        main(["math", "--out", str(tmp_path)])
    assert capsys.readouterr().err.startswith("REHEARSAL FAILED at step 'environment': ")


def test_the_rehearsal_replaces_only_its_own_folder_and_names_a_refused_command_line(
    tmp_path, monkeypatch, capsys
):
    import experiments.math.reproduce as reproduction
    import experiments.rehearse as rehearse

    monkeypatch.setattr(rehearse.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(rehearse, "smollm2_135m_instruct", lambda: Path("/models/smollm2"))
    precious = tmp_path / "results"
    (precious / "math").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["math", "--out", str(precious)])
    assert "REHEARSAL FAILED at step 'data in the hub datasets' schemas': " in capsys.readouterr().err
    assert (precious / "math").is_dir()  # left alone

    def refusing(argv):
        raise SystemExit(
            "no preset 'paper-r1-1.5b' for math"
        )  # as config_path or argparse end a reproduction

    monkeypatch.setattr(reproduction, "main", refusing)
    out = tmp_path / "rehearsal"
    for _ in range(2):  # the second time over the first one's folder
        with pytest.raises(SystemExit):
            main(["math", "--out", str(out)])
        assert capsys.readouterr().err.strip() == (
            "REHEARSAL FAILED at step 'reproduction': no preset 'paper-r1-1.5b' for math"
        )
        assert (out / ".rehearsal").read_text() == "rehearsal of math paper-r1-1.5b\n"


def test_on_a_gpu_machine_the_rehearsal_refuses(tmp_path, monkeypatch, capsys):
    import torch

    import experiments.rehearse as rehearse

    monkeypatch.setattr(rehearse.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        main(["code", "--out", str(tmp_path)])
    assert "REHEARSAL FAILED at step 'environment': this machine has a GPU" in capsys.readouterr().err
