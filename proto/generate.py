"""Regenerate the checked-in protobuf/gRPC modules: ``python -m fedquilt.proto.generate``.

The .proto files are compiled from a temporary tree ``fedquilt/proto/*.proto`` so the generated
imports read ``from fedquilt.proto import tensors_pb2`` and work from the installed package.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("tensors.proto", "secagg.proto", "federation.proto")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into ``out_dir``; returns the generated files."""
    from grpc_tools import protoc  # dev dependency (grpcio-tools)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src" / "fedquilt" / "proto"
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, src / name)
        build = Path(tmp) / "out"
        build.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{Path(tmp) / 'src'}", f"-I{include}", f"--python_out={build}", f"--pyi_out={build}",
                f"--grpc_python_out={build}"] + [f"fedquilt/proto/{n}" for n in PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        produced = sorted((build / "fedquilt" / "proto").glob("*_pb2*.py*"))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in produced:
            target = out_dir / path.name
            shutil.copy(path, target)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
