"""Where a pulled version lands: a PEFT folder written so that nothing the user had is ever lost.

Theory of operation
-------------------
``write_folder`` writes a verified version into ``out_dir`` under three rules:

* A folder that does not exist yet is built as a temp folder beside it and renamed into place (one
  ``rename``: a reader sees no folder or the whole folder).
* An existing folder is written into only when it is empty, or when it holds an earlier pull of the
  *same model* (its ``manifest.json`` names that model), or with ``force``. Then every file is written
  atomically in place (temp file + ``os.replace``), ``manifest.json`` last (it is the commit point), and
  only files the earlier pull wrote (listed in its manifest) may be removed. Files the user put there
  are never touched, so ``--out .`` is safe.
* Modes follow the umask (0755 / 0644 under the usual 022): a pulled adapter is meant to be read by
  the inference server's user.

``base`` rewrites ``base_model_name_or_path`` in ``adapter_config.json`` so that
``peft.AutoPeftModelForCausalLM.from_pretrained(DIR)`` finds the base model. The published value is
``fedquilt:<fingerprint prefix>`` (the federation pins a base by its fingerprint, not by a name); the
rewrite is recorded in ``fedquilt-pull.json`` with the published file's sha256, so the signed manifest
still verifies every other file byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..atomic_file import atomic_write

PULL_RECORD = "fedquilt-pull.json"
"""What ``fedquilt pull`` changed after verification (only with ``--base``)."""
PUBLISHED_BASE_PREFIX = "fedquilt:"


class PullFolderError(Exception):
    """The output folder cannot take this pull without losing something (nothing was written)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _earlier_model(out_dir: Path) -> str | None:
    """The model an earlier pull wrote into ``out_dir`` (None when it is not a pull folder)."""
    try:
        value = json.loads((out_dir / "manifest.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _earlier_files(out_dir: Path) -> set[str]:
    try:
        files = json.loads((out_dir / "manifest.json").read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(name) for name in files} | {"manifest.json", PULL_RECORD}


def check_target(out_dir: Path, model: str, *, force: bool = False) -> None:
    """Raise ``PullFolderError`` unless ``out_dir`` may receive a pull of ``model``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PullFolderError(f"{out_dir} exists and is not a folder")
    if not out_dir.exists() or force or not any(out_dir.iterdir()):
        return
    earlier = _earlier_model(out_dir)
    if earlier == model:
        return
    what = f"an earlier pull of model {earlier!r}" if earlier else "files that are not an earlier pull"
    raise PullFolderError(f"{out_dir} is not empty (it holds {what}); pull into a new or empty folder, or pass "
                          "--force to write the adapter's files into it (other files are left as they are)")


def with_base(files: Mapping[str, bytes], base: str | None) -> tuple[dict[str, bytes], dict[str, Any] | None]:
    """The files to write, ``adapter_config.json`` pointing at ``base``; and the record of the change."""
    out = dict(files)
    if base is None or "adapter_config.json" not in out:
        return out, None
    published = out["adapter_config.json"]
    config = json.loads(published)
    record = {"adapter_config.json": {"published_sha256": hashlib.sha256(published).hexdigest(),
                                      "base_model_name_or_path": {"published": config.get("base_model_name_or_path"),
                                                                  "written": base}}}
    config["base_model_name_or_path"] = base
    out["adapter_config.json"] = json.dumps(config, indent=2, sort_keys=True).encode()
    return out, record


def write_folder(out_dir: Path, model: str, files: Mapping[str, bytes], manifest: Mapping[str, Any], *,
                 force: bool = False, base: str | None = None) -> None:
    """Write a verified version into ``out_dir`` without deleting anything this command did not write."""
    check_target(out_dir, model, force=force)
    body, record = with_base(files, base)
    body["manifest.json"] = json.dumps(dict(manifest), indent=2, sort_keys=True).encode()
    if record is not None:
        body[PULL_RECORD] = json.dumps(record, indent=2, sort_keys=True).encode()
    file_mode, dir_mode = 0o666 & ~_umask(), 0o777 & ~_umask()
    if not out_dir.exists():
        _write_new(out_dir, body, file_mode, dir_mode)
        return
    stale = _earlier_files(out_dir) - set(body) if _earlier_model(out_dir) == model else set()
    for name in sorted(body, key=lambda n: n == "manifest.json"):  # manifest last: the commit point
        atomic_write(out_dir / name, body[name], mode=file_mode)
    for name in sorted(stale):
        (out_dir / name).unlink(missing_ok=True)


def _write_new(out_dir: Path, body: Mapping[str, bytes], file_mode: int, dir_mode: int) -> None:
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.resolve().name}.", suffix=".pulling"))
    try:
        for name, data in body.items():
            atomic_write(tmp / name, data, mode=file_mode)
        os.chmod(tmp, dir_mode)
        os.rename(tmp, out_dir)  # fails (and keeps both) if someone created out_dir meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
