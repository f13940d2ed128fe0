"""Layering as a test (DESIGN §2): dependencies point one way, read from the source, lazy imports included.

    secure_agg   numpy + cryptography only: no torch, no grpc, no I/O, no other fedquilt package
    strategies   torch/numpy LoRA math: no grpc, no I/O, no proto, agent, coordinator or secure_agg
    proto        messages and their codec: no agent, coordinator, strategies, secure_agg or torch
    agent        never imports coordinator; coordinator never imports agent
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IO_PACKAGES = {"grpc", "socket", "sqlite3", "http", "urllib", "requests", "subprocess", "prometheus_client",
               "tomllib", "shutil"}
RULES: dict[str, set[str]] = {
    "secure_agg": IO_PACKAGES | {"torch", "fedquilt.strategies", "fedquilt.proto", "fedquilt.agent",
                                 "fedquilt.coordinator", "fedquilt.cli", "fedquilt.contract"},
    "strategies": IO_PACKAGES | {"fedquilt.proto", "fedquilt.agent", "fedquilt.coordinator", "fedquilt.cli",
                                 "fedquilt.secure_agg", "fedquilt.contract"},
    "proto": {"torch", "fedquilt.strategies", "fedquilt.secure_agg", "fedquilt.agent", "fedquilt.coordinator",
              "fedquilt.cli", "fedquilt.contract"},
    "agent": {"fedquilt.coordinator", "fedquilt.cli"},
    "coordinator": {"fedquilt.agent", "fedquilt.cli"},
}


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (top level or inside functions), relative imports made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    here = ["fedquilt", *path.relative_to(root).with_suffix("").parts]
    if here[-1] == "__init__":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + (1 if path.name == "__init__.py" else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                mod = node.module
            else:
                continue
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)  # a name may be a submodule
    return found


def forbidden(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_point_one_way(package):
    banned = RULES[package]
    bad = []
    for path in sorted((ROOT / package).glob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for name in sorted(imports_of(path)):
            if forbidden(name, banned):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The checker itself can fail: a lazy relative import of the coordinator inside an agent function is found."""
    probe = tmp_path / "agent" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("import numpy\n\ndef f():\n    from ..coordinator import manifest\n    from . import loop\n")
    names = imports_of(probe, root=tmp_path)
    assert {"numpy", "fedquilt.coordinator", "fedquilt.coordinator.manifest", "fedquilt.agent.loop"} <= names
    assert sorted(n for n in names if forbidden(n, RULES["agent"])) == ["fedquilt.coordinator", "fedquilt.coordinator.manifest"]
