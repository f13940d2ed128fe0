"""A new classification head drawn from a public seed, and the fingerprint that covers it.

A pretrained encoder or LM used for ``seq-cls`` has no trained head in its folder; transformers
initialises one at random in every process. Here every parameter the checkpoint lacks is filled
from the federation's public ``head_seed`` instead: matrices from N(0, initializer_range²) drawn
from a PCG64 stream keyed by SHA-256(domain ‖ seed ‖ parameter name), biases with zeros, 1-D
weights (layer norms) with ones. So every site and every consumer that loads the same folder with
the same seed and label count holds the bit-identical head, and the seq-cls fingerprint mixes
the seed and the label count into the folder's fingerprint, so the coordinator refuses a site
whose head would differ. The randomness only has to be shared, not secret.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

_DOMAIN = b"fedquilt-head-init-v1\n"
_FP_DOMAIN = b"fedquilt-seq-cls-fingerprint-v1\n"


def _stream(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(_DOMAIN + f"{seed}\x00{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))


def seeded_value(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """The public initial value of parameter ``name`` (see the module doc)."""
    if name.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) < 2:
        return torch.ones(shape)
    return torch.from_numpy(_stream(seed, name).normal(0.0, std, size=shape)).to(torch.float32)


def seed_missing(model: torch.nn.Module, missing: Iterable[str], seed: int) -> list[str]:
    """Overwrite every newly initialised parameter of ``model`` with its seeded value; returns their names."""
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)
    params = dict(model.named_parameters())
    done: list[str] = []
    with torch.no_grad():
        for name in sorted(missing):
            if name not in params:
                continue
            p = params[name]
            p.copy_(seeded_value(seed, name, tuple(p.shape), std).to(p.dtype))
            done.append(name)
    return done


def config_num_labels(model_dir: Path) -> int:
    """The label count transformers uses for ``model_dir`` when none is given (its ``id2label``, else 2)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if isinstance(config.get("id2label"), dict):
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def seq_cls_fingerprint(folder_fingerprint: str, num_labels: int, head_seed: int) -> str:
    """The fingerprint of a seq-cls federation: the folder's, the label count and the public head seed."""
    meta = json.dumps({"base": folder_fingerprint, "num_labels": num_labels, "head_seed": head_seed},
                      sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(_FP_DOMAIN + meta).hexdigest()
