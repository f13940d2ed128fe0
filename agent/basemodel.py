"""The site's local base model: its fingerprint and loading it from a local folder only.

The fingerprint lets an agent prove that its local copy of the base model is the one the
federation trains on, without sending the weights anywhere. It is a sha256 over

* the model's ``config.json`` as canonical JSON (sorted keys, no spaces), minus the keys that
  only record who saved it (``transformers_version``, ``_name_or_path``, ``dtype`` …), and
* every weight tensor of every ``*.safetensors`` file, sorted by tensor name across files
  (so re-sharding does not change it): name, dtype, shape and the raw bytes.

The safetensors header is parsed directly and the bytes are streamed in chunks, so a large
model is hashed without loading it into memory.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from ..strategies.adapters import Task
from .config import Quantization
from .device import resolve

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype", "use_cache"}
)
_CHUNK = 1 << 20
_DOMAIN = b"fedquilt-base-fingerprint-v1\n"


class BaseModelError(ValueError):
    """The local base model folder is missing, malformed or not the federation's model."""


class FingerprintMismatch(BaseModelError):
    """The local base model is not the one the federation trains on."""

    def __init__(self, expected: str, actual: str, model_dir: Path) -> None:
        super().__init__(
            f"base model at {model_dir} has fingerprint {actual}, the federation expects {expected}"
        )
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int


def _read_header(path: Path) -> list[_TensorEntry]:
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise BaseModelError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header: dict[str, Any] = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BaseModelError(f"{path} has a malformed safetensors header: {exc}") from exc
    base = 8 + size
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        entries.append(_TensorEntry(name, info["dtype"], tuple(info["shape"]), path, base + start, base + end))
    return entries


def _canonical_config(model_dir: Path) -> bytes:
    path = model_dir / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{model_dir} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BaseModelError(f"{path} is not valid JSON: {exc}") from exc
    kept = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint(model_dir: Path) -> str:
    """sha256 hex of the model's canonical config and every weight tensor (see module doc)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{model_dir} holds no *.safetensors weight files")
    entries: dict[str, _TensorEntry] = {}
    for f in files:
        for e in _read_header(f):
            if e.name in entries:
                raise BaseModelError(f"tensor {e.name!r} appears in both {entries[e.name].file} and {f}")
            entries[e.name] = e
    h = hashlib.sha256(_DOMAIN)
    config = _canonical_config(model_dir)
    h.update(struct.pack("<Q", len(config)) + config)
    for name in sorted(entries):
        e = entries[name]
        meta = json.dumps([e.name, e.dtype, list(e.shape)], separators=(",", ":")).encode()
        h.update(struct.pack("<QQ", len(meta), e.end - e.start) + meta)
        with e.file.open("rb") as fh:
            fh.seek(e.start)
            left = e.end - e.start
            while left:
                chunk = fh.read(min(left, _CHUNK))
                if not chunk:
                    raise BaseModelError(f"{e.file} is truncated inside tensor {e.name!r}")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def federation_fingerprint(model_dir: Path, task: Task, num_labels: int | None = None, head_seed: int = 0) -> str:
    """What a site reports: the folder's fingerprint, for ``seq-cls`` mixed with the label count and head seed."""
    if task != "seq-cls":
        return fingerprint(model_dir)
    from .head_init import config_num_labels, seq_cls_fingerprint

    return seq_cls_fingerprint(fingerprint(model_dir), num_labels or config_num_labels(model_dir), head_seed)


def check_fingerprint(model_dir: Path, expected: str) -> str:
    """Return the local fingerprint; raise ``FingerprintMismatch`` if it is not ``expected``."""
    actual = fingerprint(model_dir)
    if actual != expected.lower():
        raise FingerprintMismatch(expected, actual, model_dir)
    return actual


def target_shapes(model: torch.nn.Module, suffixes: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Full names of the Linear modules whose names end in one of ``suffixes`` -> (d_out, k_in)."""
    if isinstance(suffixes, str) or not suffixes:
        raise BaseModelError(f"target_modules must be a non-empty list of module-name suffixes, got {suffixes!r}")
    found: dict[str, tuple[int, int]] = {}
    for suffix in suffixes:
        hits = [(n, m) for n, m in model.named_modules() if n == suffix or n.endswith("." + suffix)]
        if not hits:
            raise BaseModelError(f"target module {suffix!r} matches no module of the base model")
        for name, module in hits:
            if not isinstance(module, torch.nn.Linear):
                raise BaseModelError(f"target {name!r} is a {type(module).__name__}; only Linear layers are supported")
            found[name] = (module.out_features, module.in_features)
    return found


def load_base(
    model_dir: Path, task: Task, device: str = "auto", dtype: torch.dtype | None = None,
    quantization: Quantization = Quantization.NONE,
    num_labels: int | None = None, head_seed: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model and its tokenizer from a local folder (never the network), in eval mode.

    ``device="auto"`` is CUDA when present (bfloat16 if supported), else the CPU in float32;
    quantization: Quantization = Quantization.NONE, For ``seq-cls``, ``num_labels`` sets the head's size and
    ``head_seed`` fills every parameter the checkpoint lacks (a new head) from that public seed
    (``agent.head_init``), so every process holds the same head.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if task not in ("causal-lm", "seq-cls"):
        raise ValueError(f"task must be 'causal-lm' or 'seq-cls', got {task!r}")
    if not (model_dir / "config.json").is_file():
        raise BaseModelError(f"{model_dir} is not a model folder (no config.json)")
    place = resolve(device, dtype)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    extra: dict[str, Any] = dict(quantized_load_kwargs(Quantization(quantization), place.device))
    if task == "seq-cls" and num_labels:
        extra["num_labels"] = num_labels
    loaded: Any = auto.from_pretrained(str(model_dir), local_files_only=True, dtype=place.dtype,
                                       output_loading_info=True, **extra)
    model, info = loaded
    if task == "seq-cls" and head_seed is not None:  # issue 14: the new head is federated state
        from .head_init import seed_missing

        seed_missing(model, info.get("missing_keys", ()), head_seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token is None:
        # Batching needs a pad token; the EOS token is the usual stand-in for decoder models.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        # Sequence classification finds each row's last real token through the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    if not extra:  # a quantized model is already on its GPU and refuses .to()
        torch.nn.Module.to(model, place.device)
    model.eval()
    return model, tokenizer


def quantized_load_kwargs(quantization: Quantization, device: torch.device) -> dict[str, Any]:
    """``from_pretrained`` arguments for a bitsandbytes base on ``device`` (empty for ``none``)."""
    if quantization is Quantization.NONE:
        return {}
    if device.type != "cuda":
        raise BaseModelError(f"quantization = {quantization.value!r} needs a CUDA GPU (bitsandbytes), but this "
                             f"agent trains on {device}; set quantization = \"none\" to train the base as loaded")
    try:
        import bitsandbytes  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise BaseModelError(f"quantization = {quantization.value!r} needs bitsandbytes "
                             f"(pip install 'fedquilt[gpu]'): {exc}") from None
    if quantization is Quantization.FOUR_BIT:
        config = BitsAndBytesConfig(  # type: ignore[no-untyped-call, unused-ignore]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call, unused-ignore]
    return {"quantization_config": config, "device_map": {"": device.index or 0}}
