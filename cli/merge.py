"""``fedquilt merge``: fold a pulled adapter into local base weights for servers that want merged weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``merge``."""
    p = sub.add_parser(
        "merge", help="fold a PEFT adapter into a base model and save the merged model",
        description="Load the base model and the adapter with stock PEFT, merge_and_unload(), and save a plain "
                    "Hugging Face folder (safetensors) that any server loads without PEFT.")
    p.add_argument("--base", required=True, type=Path, help="local base model folder")
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder (from `fedquilt pull`)")
    p.add_argument("--out", required=True, type=Path, help="where to write the merged model")
    p.add_argument("--task", choices=["causal-lm", "seq-cls"], default="causal-lm", help="model head (default causal-lm)")
    p.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from ..agent.basemodel import load_base

    base, tokenizer = load_base(args.base, args.task, device="cpu")
    merged = PeftModel.from_pretrained(base, str(args.adapter)).merge_and_unload()
    merged.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    print(f"merged {args.adapter} into {args.base}; wrote {args.out}")
    return 0
