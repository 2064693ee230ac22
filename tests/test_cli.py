"""NAME=VALUE command-line lists (benchmark data sources, splits)."""

import pytest

from gdpo.cli import named_values


def test_named_values_parse_and_keep_the_value_whole():
    got = named_values(["apps=data/apps", "taco=BAAI/TACO:ALL", "amc=a=b.json"], "--source")
    assert got == {"apps": "data/apps", "taco": "BAAI/TACO:ALL", "amc": "a=b.json"}
    assert named_values([], "--data") == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("apps", "--source expects NAME=VALUE, got 'apps'"),
        ("apps=", "--source expects NAME=VALUE, got 'apps='"),
        ("=data", "--source expects NAME=VALUE, got '=data'"),
        ("mbpp=x", "--source: unknown name 'mbpp' in 'mbpp=x'; known: ['apps', 'taco']"),
    ],
)
def test_named_values_name_the_flag_and_the_item(item, message):
    with pytest.raises(SystemExit) as err:
        named_values([item], "--source", ("apps", "taco"))
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["steps=-5"], "config error: steps must be a positive integer, got -5"),
        (["optim.lr=.inf"], "config error: optim.lr must be a finite number, got inf"),
        (["algorithm.methd=grpo"], "config error: unknown config key 'algorithm.methd'; known keys under algorithm:"),
        (["novalue"], "config error: override 'novalue' must look like key.subkey=value"),
        (["data.options.length_limit=-7"], "config error: data.options.length_limit must be a positive integer, got -7"),
        (["--config", "missing.yaml"], "config error: config file missing.yaml does not exist"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_and_exit_code_2(args, message, capsys):
    from gdpo.cli import main

    with pytest.raises(SystemExit) as err:
        main(args, task="math")
    assert err.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(message) and out.err.count("\n") == 1


def test_config_files_that_cannot_be_read_exit_2(tmp_path, capsys):
    from gdpo.cli import main

    (tmp_path / "bad.yaml").write_bytes(b"steps: \xff\n")
    for path, message in [
        (tmp_path, f"config error: config file {tmp_path} is a directory, not a YAML file\n"),
        (
            tmp_path / "bad.yaml",
            f"config error: {tmp_path / 'bad.yaml'}: not UTF-8 text (byte 0xff at offset 7)\n",
        ),
    ]:
        with pytest.raises(SystemExit) as err:
            main(["--config", str(path)])
        assert err.value.code == 2 and capsys.readouterr().err == message


def test_describe_lists_the_run_config_and_every_task_option(capsys):
    from gdpo.cli import main

    main(["--describe"])
    text = capsys.readouterr().out
    assert "optim.lr" in text and "# data.options of task 'math'" in text
    assert "data.options.length_limit" in text and "[a positive integer]" in text


def test_a_train_script_exits_2_with_one_line_and_no_traceback(tmp_path):
    """The real entry point, as a user runs it: no torch import, no traceback, exit code 2."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "bad.yaml").write_bytes(b"rollout:\n  temperature: .inf\n")
    for args, message in [
        (["steps=-5"], "config error: steps must be a positive integer, got -5\n"),
        (["--config", str(tmp_path / "bad.yaml")], f"config error: {tmp_path / 'bad.yaml'}: rollout.temperature "
         "must be a finite number, got inf\n"),
    ]:  # fmt: skip
        out = subprocess.run(
            [sys.executable, "experiments/toy/train.py", *args], cwd=root, capture_output=True, text=True
        )
        assert (out.returncode, out.stdout, out.stderr) == (2, "", message)
    # A split the trainer refuses once the process group is up (DeepSpeed has printed its start-up lines by then).
    args = [
        "--config",
        "experiments/toy/configs/tiny.yaml",
        "optim.mini_batches=3",
        f"logging.run_dir={tmp_path}/r",
    ]
    out = subprocess.run(
        [sys.executable, "experiments/toy/train.py", *args], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        "config error: optim.mini_batches=3 must divide the 64 sequences per rank (prompts_per_step/world x num_rollouts)"
    )
