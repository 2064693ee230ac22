"""gdpo.data.records: one reader for every task's data files."""

import json

import pandas as pd
import pytest

from gdpo.data.records import read_records


def test_every_format_gives_the_same_plain_rows(tmp_path):
    # A null answer and an integer column with a null in it (OlympiadBench-like rows): pandas would give NaN and
    # floats (id 1.0), which the loaders' "missing field" checks and row ids would then misread.
    rows = [
        {"id": 1, "n": 1, "answer": None, "tests": [1, 2]},
        {"id": 2, "n": None, "answer": "3", "tests": [3]},
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    pd.DataFrame(rows).to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.jsonl", "rows.json", "wrapped.json", "rows.parquet"):
        got, where = read_records(tmp_path / name)
        assert got == rows and where == str(tmp_path / name), name
    assert type(read_records(tmp_path / "rows.parquet")[0][0]["tests"]) is list  # not a numpy array


def test_a_folder_is_read_by_split(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"q": "a"}\n')
    (tmp_path / "train.json").write_text('[{"q": "b"}]')
    assert read_records(tmp_path, "test") == ([{"q": "a"}], str(tmp_path / "test.jsonl"))
    assert read_records(tmp_path, "train")[0] == [{"q": "b"}]
    with pytest.raises(FileNotFoundError, match="holds none of valid.jsonl, valid.json, valid.parquet"):
        read_records(tmp_path, "valid")


def test_bad_files_are_errors_naming_them(tmp_path):
    (tmp_path / "object.json").write_text('{"q": "a"}')
    with pytest.raises(ValueError, match=r"object\.json: expected a JSON list of rows .* got dict"):
        read_records(tmp_path / "object.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json: not JSON"):
        read_records(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="no data file at"):
        read_records(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="no data file at"):
        read_records("./nowhere")  # a relative path, not a hub name


def test_a_hub_dataset_that_cannot_be_loaded_is_named(monkeypatch):
    import datasets

    def refuse(name, config, split):
        raise RuntimeError(f"Dataset scripts are no longer supported, but found {name.split('/')[1]}.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(RuntimeError, match=r"cannot load hub dataset 'BAAI/TACO' split 'test': .*TACO.py"):
        read_records("BAAI/TACO", "test")


def test_bytes_that_are_not_utf8_are_named_by_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"q": "a"}\n{"q": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl line 2: not UTF-8 \(byte 0xe9 at column 11: "):
        read_records(path)
    (tmp_path / "latin1.json").write_bytes(b'[\n {"q": "a"},\n {"q": "\xff"}\n]')
    with pytest.raises(ValueError, match=r"latin1\.json line 3: not UTF-8 \(byte 0xff at column 9: "):
        read_records(tmp_path / "latin1.json")


def test_json_nested_too_deep_to_parse_names_the_file_and_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.jsonl").write_text('{"q": "a"}\n\n' + deep + "\n")
    with pytest.raises(
        ValueError, match=r"deep\.jsonl line 3: JSON nested 100000 levels deep, too deep to read"
    ):
        read_records(tmp_path / "deep.jsonl")
    # In a JSON file: the line where the nesting is deepest (brackets inside strings do not count).
    (tmp_path / "deep.json").write_text('[\n {"q": "[[[["},\n ' + deep + "\n]")
    with pytest.raises(
        ValueError, match=r"deep\.json line 3: JSON nested 100001 levels deep, too deep to read"
    ):
        read_records(tmp_path / "deep.json")


def test_jsonl_lines_split_at_newlines_only(tmp_path):
    # U+2028 and U+0085 are valid unescaped inside JSON strings; str.splitlines() would cut the row there.
    rows = [{"q": "a\u2028b\x85c"}, {"q": "d"}]
    (tmp_path / "rows.jsonl").write_text(
        "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    )
    assert read_records(tmp_path / "rows.jsonl")[0] == rows
