"""A real federation in one test process: in-test CA, coordinator on port 0, agents in threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fedquilt.cli.federation_files import FederationFiles, point_agents_at, write_federation
from fedquilt.cli.workspace import Workspace, build_workspace
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config


@dataclass
class Federation:
    """A started coordinator plus agent threads."""

    files: FederationFiles
    ws: Workspace
    running: server.RunningCoordinator
    loops: list[Any] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    """Set at teardown: agent threads still retrying a stopped coordinator then end quietly."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def start_agents(self, which: list[int] | None = None) -> None:
        from fedquilt.cli.agent import build_loop

        point_agents_at(self.files, self.address)
        for i, cfg in enumerate(self.files.agent_configs):
            if which is not None and i not in which:
                continue
            loop = build_loop(cfg, progress=False)
            t = threading.Thread(target=self._serve, args=(loop,), daemon=True, name=f"agent-{i}")
            t.start()
            self.loops.append(loop)
            self.threads.append(t)

    def _serve(self, loop: Any) -> None:
        try:
            loop.run()
        except BaseException:
            if not self.stopped.is_set():  # a failure while the test runs is the test's business
                raise

    def wait_rounds(self, timeout: float = 240.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not self.running.orchestrator.finished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"federation did not finish: {self.running.orchestrator.status()}")
            time.sleep(0.2)
        for t in self.threads:
            t.join(timeout=20)
        return list(self.running.orchestrator.status()["history"])


@pytest.fixture(scope="session")
def workspace_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Workspace]:
    cache: dict[tuple[Any, ...], Workspace] = {}

    def make(sites: int = 3, task: str = "causal-lm") -> Workspace:
        key = (sites, task)
        if key not in cache:
            cache[key] = build_workspace(tmp_path_factory.mktemp("ws"), sites=sites, task=task)  # type: ignore[arg-type]
        return cache[key]

    return make


@pytest.fixture
def federation(tmp_path: Path, workspace_factory: Callable[..., Workspace]) -> Iterator[Callable[..., Federation]]:
    started: list[Federation] = []

    def start(sites: int = 2, task: str = "causal-lm", **kwargs: Any) -> Federation:
        ws = workspace_factory(sites, task)
        kwargs.setdefault("train", {"local_steps": 4, "batch_size": 8, "lr": 3e-3})
        files = write_federation(tmp_path / "fed", ws, **kwargs)
        running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
        fed = Federation(files, ws, running)
        started.append(fed)
        return fed

    yield start
    for fed in started:
        fed.stopped.set()
        fed.running.stop(grace=0.1)
