"""The status page in headless Chromium at 1400 px and 600 px: round progress, deadline, finished, versions with ε.

``FEDQUILT_WRITE_SCREENSHOTS=1`` also saves the screenshots as docs/img/status-*.png (referenced by
docs/observability.md); the test itself only reads them from a temp folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedquilt.coordinator.metrics import Metrics
from fedquilt.coordinator.status_page import SERIES, start_http

from test_status_page_chromium import CHROMIUM, chromium, decode_png

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: apt-get install -y chromium")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def _history() -> list[dict[str, Any]]:
    rows = []
    for r, (before, after, ev) in enumerate([(2.41, 1.93, 2.02), (1.95, 1.52, 1.71), (1.55, 1.21, 1.44)], start=1):
        rows.append({"round": r, "version": f"v000{r}", "contributors": 3, "dropouts": 0, "seconds": 40.0 + r,
                     "loss_before": before, "loss_after": after, "eval_loss": ev, "round_id": f"r000{r}-5e6f7a8{r}",
                     "published_at": f"2026-12-01T14:0{r}:30+00:00", "epsilon": round(1.1 * r, 2)})
    return rows


def in_flight() -> dict[str, Any]:
    """Round 4 in its secure sum: two sites sent their masked input, one dropped out of training."""
    return {
        "federation": "clinics", "model": "clinical-notes", "rule": "secure-stack", "secure_aggregation": True,
        "running": True, "state": "running", "rounds_done": 3, "rounds_planned": 5, "global_version": "v0003",
        "current_round": {"round": 4, "id": "r0004-9f8e7d6c", "stage": "phase", "phase": 0,
                          "cohort": ["north-lab", "riverside", "st-marys"], "participants": ["north-lab", "st-marys"],
                          "progress": {"north-lab": "sent", "riverside": "dropped", "st-marys": "waiting"},
                          "deadline_utc": "2026-12-01T14:06:10+00:00", "secure_sum_step": "masked"},
        "sites": [
            {"site": "north-lab", "online": True, "num_samples": 80, "rank": 8, "last_seen_seconds_ago": 1.2},
            {"site": "riverside", "online": False, "num_samples": 50, "rank": 4, "last_seen_seconds_ago": 301.0},
            {"site": "st-marys", "online": True, "num_samples": 120, "rank": 8, "last_seen_seconds_ago": 0.4},
        ],
        "history": _history(),
    }


def finished() -> dict[str, Any]:
    status = in_flight()
    status.update(state="finished", rounds_done=3, rounds_planned=3, current_round=None)
    return status


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    servers = {name: start_http("127.0.0.1:0", Metrics(), lambda s=fn(): s) for name, fn in
               (("in-flight", in_flight), ("finished", finished))}
    yield {name: f"http://127.0.0.1:{port}/status" for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.stop()


@pytest.mark.parametrize("width", [1400, 600])
def test_status_page_at_width(urls: dict[str, str], tmp_path: Path, width: int) -> None:
    dom = chromium(tmp_path, "--dump-dom", urls["in-flight"]).stdout
    progress = re.findall(r'<tr class="progress"><td>([^<]*)</td><td class="[^"]*">(\w+)</td>', dom)
    assert progress == [("north-lab", "sent"), ("riverside", "dropped"), ("st-marys", "waiting")]
    assert "secure sum: masked" in dom and "deadline 2026-12-01 14:06:10 UTC" in dom
    assert "2026-12-01 14:03:30" in dom and "<th>ε</th>" in dom and ">3.3<" in dom and "r0003-5e6f7a83" in dom
    assert "mean cross-entropy loss" in dom
    done = chromium(tmp_path, "--dump-dom", urls["finished"]).stdout
    assert '<span class="done" id="state">finished</span>' in done
    for name, url in urls.items():
        png = tmp_path / f"status-{name}-{width}.png"
        chromium(tmp_path, f"--screenshot={png}", f"--window-size={width},1500", "--hide-scrollbars", url)
        w, h, pixels = decode_png(png.read_bytes())
        assert (w, h) == (width, 1500)
        colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for _, _, c, _ in SERIES}
        seen = {colour: sum(1 for p in pixels if p == colour) for colour in colours}
        assert all(n > 30 for n in seen.values()), seen  # the plot fits and is drawn at this width
        if os.environ.get("FEDQUILT_WRITE_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(exist_ok=True)
            shutil.copy(png, DOCS_IMG / png.name)
