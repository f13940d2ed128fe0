"""Local dataset loading: JSONL/CSV parity, tokenisation, collation, and errors naming file and row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from fedquilt.agent.data import IGNORE_INDEX, DataError, load_dataset
from fedquilt.cli.workspace import Workspace


@pytest.fixture(scope="module")
def tok(tiny_workspace: Workspace) -> Any:
    return AutoTokenizer.from_pretrained(tiny_workspace.model_dir, local_files_only=True)


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_and_csv_give_the_same_examples(tmp_path: Path, tok: Any) -> None:
    texts = ["the nurse calms the child.", 'the banker, "quietly", sells the bonds.']
    a = load_dataset(jsonl(tmp_path / "d.jsonl", [{"text": t, "label": i} for i, t in enumerate(texts)]), tok, "seq-cls")
    csv_text = 'text,label\nthe nurse calms the child.,0\n"the banker, ""quietly"", sells the bonds.",1\n'
    (tmp_path / "d.csv").write_text(csv_text)
    b = load_dataset(tmp_path / "d.csv", tok, "seq-cls")
    assert a.n == b.n == 2
    for i in range(2):
        assert torch.equal(a[i]["input_ids"], b[i]["input_ids"])
        assert torch.equal(a[i]["input_ids"], torch.tensor(tok(texts[i])["input_ids"]))
        assert int(a[i]["labels"]) == int(b[i]["labels"]) == i


def test_causal_collate_pads_and_masks_labels(tmp_path: Path, tok: Any) -> None:
    data = load_dataset(jsonl(tmp_path / "d.jsonl", [{"text": "the robot"}, {"text": "the robot heats the acid."}]), tok, "causal-lm")
    short, long = (len(tok(t)["input_ids"]) for t in ("the robot", "the robot heats the acid."))
    batch = data.collate([data[0], data[1]])
    assert batch["input_ids"].shape == (2, long)
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long - short)
    assert batch["input_ids"][0, short:].tolist() == [tok.pad_token_id] * (long - short)
    assert batch["labels"][0].tolist() == batch["input_ids"][0, :short].tolist() + [IGNORE_INDEX] * (long - short)
    assert torch.equal(batch["labels"][1], batch["input_ids"][1])


def test_truncates_to_max_length(tmp_path: Path, tok: Any) -> None:
    data = load_dataset(jsonl(tmp_path / "d.jsonl", [{"text": "the nurse " * 40}]), tok, "causal-lm", max_length=9)
    assert data[0]["input_ids"].shape == (9,)


def test_blank_lines_are_skipped(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n\n   \n{"text": "b"}\n')
    assert load_dataset(tmp_path / "d.jsonl", tok, "causal-lm").n == 2


@pytest.mark.parametrize(
    ("name", "content", "task", "message"),
    [
        ("d.jsonl", "", "causal-lm", r"d\.jsonl is empty"),
        ("d.jsonl", '{"text": "a"}\n{"txt": "b"}\n', "causal-lm", r"d\.jsonl: line 2 has no 'text' field"),
        ("d.jsonl", '{"text": "a"}\n{"text": ""}\n', "causal-lm", r"line 2 has an empty or non-string 'text'"),
        ("d.jsonl", '{"text": "a"}\n{"text": 3}\n', "causal-lm", r"line 2 has an empty or non-string 'text'"),
        ("d.jsonl", '{"text": "a"}\n{"text": "b"\n', "causal-lm", r"d\.jsonl: line 2 is not valid JSON"),
        ("d.jsonl", '["a"]\n', "causal-lm", r"line 1 is a list"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n', "seq-cls", r"line 2 has a non-integer label 1\.5"),
        ("d.jsonl", '{"text": "a", "label": true}\n', "seq-cls", r"line 1 has a non-integer label True"),
        ("d.jsonl", '{"text": "a"}\n', "seq-cls", r"line 1 has no 'label' field"),
        ("d.jsonl", '{"text": "a", "label": -1}\n', "seq-cls", r"line 1 has label -1"),
        ("d.csv", "", "causal-lm", r"d\.csv is empty"),
        ("d.csv", "text\n", "causal-lm", r"d\.csv is empty"),
        ("d.csv", "body,label\nx,1\n", "seq-cls", r"d\.csv: line 1 \(header\) has no 'text' column"),
        ("d.csv", "text,label\na,0\nb,one\n", "seq-cls", r"d\.csv: line 3 has a non-integer label 'one'"),
        ("d.txt", "hello\n", "causal-lm", r"unknown format '\.txt'"),
    ],
)
def test_errors_name_file_and_row(tmp_path: Path, tok: Any, name: str, content: str, task: Any, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / name, tok, task)


def test_missing_file_and_label_bound(tmp_path: Path, tok: Any) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl does not exist"):
        load_dataset(tmp_path / "nope.jsonl", tok, "causal-lm")
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 3}])
    assert load_dataset(path, tok, "seq-cls").n == 2
    with pytest.raises(DataError, match=r"line 2 has label 3, expected \[0, 3\)"):
        load_dataset(path, tok, "seq-cls", num_labels=3)


def test_folder_needs_datasets_or_loads_it(tmp_path: Path, tok: Any) -> None:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        with pytest.raises(DataError, match="needs `datasets`"):
            load_dataset(tmp_path, tok, "causal-lm")
        return
    datasets.Dataset.from_dict({"text": ["the robot", "the nurse"], "label": [2, 0]}).save_to_disk(str(tmp_path / "ds"))
    data = load_dataset(tmp_path / "ds", tok, "seq-cls")
    assert data.n == 2 and int(data[0]["labels"]) == 2
