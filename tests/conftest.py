"""Shared fixtures: a tiny local workspace (model folder, tokenizer, per-site JSONL) per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fedquilt.cli.workspace import Workspace

# Tiny models run far faster on one thread: on a 2-core box shared with other processes, torch's
# intra-op threads mostly spin (a 64x64 matmul goes from 0.04 ms to 0.8 ms). Must be set before
# torch is imported; an explicit setting in the environment wins. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A causal-LM workspace: tiny Llama + BPE tokenizer in ``model_dir``, 3 non-IID sites of JSONL."""
    from fedquilt.cli.workspace import build_workspace

    return build_workspace(Path(tmp_path_factory.mktemp("workspace")), sites=3, task="causal-lm", seed=0)


@pytest.fixture(scope="session")
def tiny_cls_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A seq-cls workspace: tiny LlamaForSequenceClassification (3 topic labels), 3 sites."""
    from fedquilt.cli.workspace import build_workspace

    return build_workspace(Path(tmp_path_factory.mktemp("cls-workspace")), sites=3, task="seq-cls", seed=0)
