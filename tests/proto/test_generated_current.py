"""The checked-in generated code equals what the generator produces from the .proto files."""

from __future__ import annotations

from pathlib import Path

import fedquilt.proto as proto_pkg
from fedquilt.proto.generate import generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    here = Path(proto_pkg.__file__).parent
    produced = generate(tmp_path)
    assert produced, "the generator produced nothing"
    stale = [p.name for p in produced if p.read_bytes() != (here / p.name).read_bytes()]
    assert not stale, f"regenerate with `python -m fedquilt.proto.generate`: stale {stale}"
