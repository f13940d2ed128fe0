"""Standard PEFT adapter folders <-> ``Adapter`` (named LoRA factors).

Key names are exactly what PEFT writes (``base_model.model.<module>.lora_A.weight``), the
configuration is a ``peft.LoraConfig`` saved by PEFT itself, and mixed ranks or scalings go into
``rank_pattern`` / ``alpha_pattern`` so ``PeftModel.from_pretrained(base, folder)`` loads the
folder as it is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal, Mapping

import torch
from safetensors.torch import load_file, save_file

from .lora import Adapter, LoraFactors

Task = Literal["causal-lm", "seq-cls"]
_PREFIX = "base_model.model."
_WEIGHTS = "adapter_model.safetensors"


def peft_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's own key names (contiguous float32)."""
    out: dict[str, torch.Tensor] = {}
    for name, f in sorted(adapter.items()):
        out[f"{_PREFIX}{name}.lora_A.weight"] = f.A.detach().to(torch.float32).contiguous().cpu()
        out[f"{_PREFIX}{name}.lora_B.weight"] = f.B.detach().to(torch.float32).contiguous().cpu()
    return out


def save_peft(
    adapter: Adapter, out_dir: Path, base_model: str, task: Task, saved: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that stock PEFT loads.

    ``saved`` (``<module>.<param>`` -> tensor) are densely trained modules, written as PEFT's
    ``modules_to_save`` so ``PeftModel.from_pretrained`` replaces those modules with them.
    """
    from peft import LoraConfig  # heavy import, only where needed

    if not adapter:
        raise ValueError("cannot save an empty adapter")
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = {name: f.rank for name, f in adapter.items()}
    alphas = {name: f.scaling * f.rank for name, f in adapter.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates int but scales by any float alpha
        target_modules=sorted(adapter),
        rank_pattern={n: k for n, k in ranks.items() if k != r},
        alpha_pattern={n: a for n, a in alphas.items() if a != alpha},
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM" if task == "causal-lm" else None,
        base_model_name_or_path=base_model,
        modules_to_save=sorted({p.rsplit(".", 1)[0] for p in saved}) if saved else None,
    )
    config.save_pretrained(str(out_dir))
    tensors = peft_state_dict(adapter)
    for param, value in sorted((saved or {}).items()):
        tensors[f"{_PREFIX}{param}"] = value.detach().to(torch.float32).contiguous().cpu()
    save_file(tensors, str(out_dir / _WEIGHTS), metadata={"format": "pt"})


def load_saved(folder: Path) -> dict[str, torch.Tensor]:
    """The ``modules_to_save`` parameters of a PEFT folder (``<module>.<param>`` -> tensor; empty if none)."""
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    modules = config.get("modules_to_save") or []
    tensors = load_file(str(folder / _WEIGHTS))
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        param = key[len(_PREFIX):]
        if ".lora_" not in key and param.rsplit(".", 1)[0] in modules:
            out[param] = value
    return out


def load_peft(folder: Path) -> Adapter:
    """Read a PEFT LoRA folder back into named factors with their scalings."""
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / _WEIGHTS))
    r0, a0 = int(config["r"]), float(config["lora_alpha"])
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    adapter: Adapter = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[len(_PREFIX) : -len(".lora_A.weight")]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = int(rank_pattern.get(name, r0))
        alpha = float(alpha_pattern.get(name, a0))
        if a.shape[0] != r:
            raise ValueError(f"{name}: lora_A has rank {a.shape[0]} but the config says {r}")
        scaling = alpha / (r**0.5) if rslora else alpha / r
        adapter[name] = LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=scaling)
    if not adapter:
        raise ValueError(f"{folder} holds no LoRA weights")
    return adapter
