"""A site's private training data, read from a local file and tokenised for its task.

Accepted sources: a JSONL file (one JSON object per line), a CSV file with a header row, or a
folder written by ``datasets.Dataset.save_to_disk`` when the ``datasets`` package is installed.
Rows need a non-empty string ``text``; ``seq-cls`` rows also need an integer ``label``
(``0 <= label < num_labels`` when ``num_labels`` is given). Every error names the file and the
line (or row) at fault.

Examples stay unpadded; ``TokenizedDataset.collate`` pads a batch to its longest row, so batches
are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``). For ``causal-lm`` the
labels are the input ids with padding set to -100 (the model shifts them itself).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import torch
from torch.utils.data import Dataset

from ..strategies.adapters import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Batch = dict[str, torch.Tensor]
IGNORE_INDEX = -100


class DataError(ValueError):
    """The local dataset is missing or malformed (the message names the file and row)."""


class TokenizedDataset(Dataset[Batch]):
    """Tokenised examples of one task; ``n`` is the sample count the site reports."""

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[int] | None, pad_id: int) -> None:
        self._ids = [torch.tensor(list(ids), dtype=torch.long) for ids in input_ids]
        self._labels = None if labels is None else torch.tensor(list(labels), dtype=torch.long)
        self.pad_id = pad_id
        """Token id used to pad batches."""

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> Batch:
        ids = self._ids[index]
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self._labels is not None:
            item["labels"] = self._labels[index]
        return item

    def collate(self, items: list[Batch]) -> Batch:
        """Right-pad a list of examples into one batch."""
        width = max(int(it["input_ids"].shape[0]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            length = int(it["input_ids"].shape[0])
            ids[row, :length] = it["input_ids"]
            mask[row, :length] = 1
        if self._labels is not None:
            labels = torch.stack([it["labels"] for it in items])
        else:
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON: {exc}") from exc


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is not None and "text" not in reader.fieldnames:
            raise DataError(f"{path}: line 1 (header) has no 'text' column (columns: {reader.fieldnames})")
        for row in reader:
            yield f"line {reader.line_num}", row


def _disk_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import datasets  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise DataError(f"{path} is a folder; reading a datasets.save_to_disk folder needs `datasets`") from exc
    loaded: Any = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path} holds splits {sorted(loaded)}, none called 'train'")
        loaded = loaded["train"]
    for index, row in enumerate(loaded):
        yield f"row {index}", row


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs from a JSONL / CSV file or a ``save_to_disk`` folder."""
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    if path.is_dir():
        return _disk_rows(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path)
    raise DataError(f"dataset {path}: unknown format {suffix!r} (expected .jsonl or .csv, or a folder)")


def _text(path: Path, where: str, row: Any) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where} is a {type(row).__name__}, expected an object with a 'text' field")
    if "text" not in row:
        raise DataError(f"{path}: {where} has no 'text' field (fields: {sorted(row)})")
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path}: {where} has an empty or non-string 'text': {text!r}")
    return text


def _label(path: Path, where: str, row: dict[str, Any], num_labels: int | None) -> int:
    if "label" not in row:
        raise DataError(f"{path}: {where} has no 'label' field (fields: {sorted(row)})")
    raw = row["label"]
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise DataError(f"{path}: {where} has a non-integer label {raw!r}")
    try:
        label = int(raw.strip()) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise DataError(f"{path}: {where} has a non-integer label {raw!r}") from exc
    if label < 0 or (num_labels is not None and label >= num_labels):
        bound = f"[0, {num_labels})" if num_labels is not None else ">= 0"
        raise DataError(f"{path}: {where} has label {label}, expected {bound}")
    return label


def load_dataset(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    max_length: int = 128,
    num_labels: int | None = None,
) -> TokenizedDataset:
    """Read, check and tokenise a local dataset for ``task`` (truncating rows to ``max_length``)."""
    if task not in ("causal-lm", "seq-cls"):
        raise ValueError(f"task must be 'causal-lm' or 'seq-cls', got {task!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    texts: list[str] = []
    labels: list[int] = []
    for where, row in read_rows(path):
        texts.append(_text(path, where, row))
        if task == "seq-cls":
            labels.append(_label(path, where, row, num_labels))
    if not texts:
        raise DataError(f"dataset {path} is empty (no rows)")
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError(f"the tokenizer for {path} has neither a pad nor an EOS token to pad with")
    return TokenizedDataset(encoded["input_ids"], labels if task == "seq-cls" else None, int(pad))
