"""The .proto files are an API for other languages: they compile from any checkout and document themselves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import fedquilt.proto as proto_pkg

HERE = Path(proto_pkg.__file__).parent
PROTOS = sorted(HERE.glob("*.proto"))


def test_compiles_from_a_checkout_with_another_name(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    src = tmp_path / "my-fork-of-the-project" / "proto"
    src.mkdir(parents=True)
    for p in PROTOS:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    out.mkdir()
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}"] + [str(src / p.name) for p in PROTOS]
    assert protoc.main(args) == 0
    assert sorted(p.name for p in out.glob("*_pb2.py")) == sorted(p.stem + "_pb2.py" for p in PROTOS)


def test_every_service_rpc_message_and_field_is_commented() -> None:
    missing = []
    for path in PROTOS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            above = lines[i - 1].strip() if i else ""
            if stripped.startswith(("service ", "rpc ", "message ", "enum ")) and not above.startswith("//"):
                missing.append(f"{path.name}:{i + 1}: {stripped}")
            if stripped.startswith("service ") and "Role" not in above + " ".join(lines[max(0, i - 3):i]):
                missing.append(f"{path.name}:{i + 1}: service without its role")
            field = re.match(r"(optional |repeated |map<[^>]+> )?[\w.]+ \w+ = \d+;", stripped)
            if field and "//" not in stripped and not above.startswith("//"):
                missing.append(f"{path.name}:{i + 1}: {stripped}")
    assert not missing, "\n".join(missing)


def test_rpc_comments_name_the_role() -> None:
    text = (HERE / "federation.proto").read_text()
    for service, role in (("Federation", "site"), ("Models", "any certificate"), ("Admin", "admin")):
        head = text[:text.index(f"service {service} {{")].rsplit("\n\n", 1)[-1]
        assert f"Role: {role}" in head, service


def test_byte_orders_are_stated() -> None:
    secagg, tensors = (HERE / "secagg.proto").read_text(), (HERE / "tensors.proto").read_text()
    assert "little-endian" in secagg and "big-endian" in secagg
    assert tensors.count("little-endian") >= 3


def test_no_field_carries_json_text_and_times_are_timestamps() -> None:
    """Typed messages for other languages: no *_json field, no ``string … time``; every time a Timestamp."""
    bad = []
    for path in PROTOS:
        for i, line in enumerate(path.read_text().splitlines()):
            field = re.match(r"\s*(optional |repeated )?([\w.]+) (\w+) = \d+;", line)
            if not field:
                continue
            kind, name = field.group(2), field.group(3)
            if name.endswith("_json") or (kind == "string" and re.search(r"(^|_)(created|seen|at|time|deadline)$", name)):
                bad.append(f"{path.name}:{i + 1}: {line.strip()}")
            if re.search(r"(_at|last_seen|deadline)$", name) and kind != "google.protobuf.Timestamp":
                bad.append(f"{path.name}:{i + 1}: {line.strip()} (not a Timestamp)")
    assert not bad, "\n".join(bad)
