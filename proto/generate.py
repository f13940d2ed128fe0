"""Regenerate the checked-in protobuf/gRPC modules: ``python -m fedquilt.proto.generate``.

The .proto files import each other by bare file name (``import "tensors.proto";``), so any checkout
compiles them with ``protoc -I proto proto/*.proto``, whatever its folder is called. protoc then
writes bare Python imports (``import tensors_pb2``); they are rewritten to package-relative ones
(``from . import tensors_pb2``) so the generated modules work from the installed package.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("tensors.proto", "secagg.proto", "round.proto", "federation.proto")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into ``out_dir``; returns the generated files."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, src / name)
        build = Path(tmp) / "out"
        build.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{Path(tmp) / 'src'}", f"-I{include}", f"--python_out={build}", f"--pyi_out={build}",
                f"--grpc_python_out={build}"] + [str(src / n) for n in PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        produced = sorted(build.glob("*_pb2*.py*"))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in produced:
            target = out_dir / path.name
            target.write_text(_relative_imports(path.read_text()))
            written.append(target)
        return written


_BARE_IMPORT = re.compile(r"^import (\w+_pb2(?:_grpc)?) as (\w+)$", re.M)


def _relative_imports(text: str) -> str:
    """``import tensors_pb2 as x`` -> ``from . import tensors_pb2 as x`` (generated .py and .pyi)."""
    text = _BARE_IMPORT.sub(r"from . import \1 as \2", text)
    return re.sub(r"^from (\w+_pb2) import ", r"from .\1 import ", text, flags=re.M)


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
