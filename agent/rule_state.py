"""The site's persistent rule state (e.g. Fed-ALoRA's local A, FedRot-LoRA's reference): one file of tensors.

Rules keep per-site memory across rounds in a plain mapping. The agent writes it atomically after the
last phase of each round and reads it back at start with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only. A rule that stores anything else would make the agent
unable to restart, so ``save`` checks that the state reloads that way *before* it replaces the file
and names the offending key otherwise.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import torch


class RuleStateError(ValueError):
    """A rule put something into the site state that cannot be reloaded safely."""


class RuleStateFile:
    """``state_dir/rule_state.pt``: load at start, save after each round's last phase."""

    def __init__(self, path: Path) -> None:
        """Remember where the state lives (nothing is read yet)."""
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved state, or an empty one on a site's first start."""
        if not self.path.exists():
            return {}
        try:
            return dict(torch.load(self.path, weights_only=True))
        except Exception as exc:
            raise RuleStateError(f"{self.path} cannot be reloaded safely ({exc}); move it away to start "
                                 "this site without its rule state") from None

    def save(self, state: Mapping[str, Any]) -> None:
        """Atomically replace the file, after checking the state reloads with ``weights_only=True``."""
        if not state:
            return
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:
            bad = sorted(k for k, v in state.items() if not _reloadable(v))
            raise RuleStateError(f"rule state keys {bad} hold values other than tensors and plain containers; "
                                 "a rule's site state must be tensors only") from None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(self.path)


def _reloadable(value: Any) -> bool:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return True
