"""``fedquilt fingerprint MODEL_DIR``: the base-model fingerprint a federation pins."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``fingerprint``."""
    p = sub.add_parser(
        "fingerprint", help="print the sha256 fingerprint of a local base model folder",
        description="sha256 over the model's config.json and every weight tensor (name, dtype, shape, bytes). Put it "
                    "in the coordinator's [federation] base_fingerprint; agents with another base are refused.")
    p.add_argument("model_dir", type=Path, help="a local Hugging Face model folder (safetensors weights)")
    p.add_argument("--task", choices=["causal-lm", "seq-cls"], default="causal-lm",
                   help="seq-cls mixes the label count and the public head seed in (what seq-cls sites report)")
    p.add_argument("--num-labels", type=int, default=None, help="seq-cls label count (default: the model config's)")
    p.add_argument("--head-seed", type=int, default=0, help="seq-cls public seed of a new head (default 0)")
    p.set_defaults(func=_fingerprint)


def _fingerprint(args: argparse.Namespace) -> int:
    from ..agent.basemodel import federation_fingerprint

    if not args.model_dir.exists():
        raise FileNotFoundError(f"{args.model_dir} does not exist (give a local Hugging Face model folder)")
    if not args.model_dir.is_dir():
        raise NotADirectoryError(f"{args.model_dir} is not a folder (give a local Hugging Face model folder)")
    print(federation_fingerprint(args.model_dir, args.task, args.num_labels, args.head_seed))
    return 0
