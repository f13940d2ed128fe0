"""Answer one secure-sum step with the agent's real ``SecureSumClient`` over its real transport, as ``AgentLoop`` does.

The client is sans I/O: it returns the actions for a step (a ``Fetch`` of the CRL before advertising keys, the
``Submit`` / ``UploadMasked`` replies); ``answer`` performs them with the agent's own ``fetch`` / ``send``.
"""

from __future__ import annotations

from typing import Any

from fedquilt import secure_agg as sa
from fedquilt.agent.loop import fetch, send
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.site_actions import Audit, Fetch, SiteAction, decode_step
from fedquilt.proto import federation_pb2 as pb


def answer(client: SecureSumClient, loop: Any, work: Any, task: pb.Task) -> None:
    """Let ``client`` answer ``task`` for the site ``loop.site`` over ``loop.transport``."""
    actions: list[SiteAction] = client.on_step(sa.SiteId(loop.site), work, decode_step(task))
    while actions:
        action = actions.pop(0)
        if isinstance(action, Fetch):
            actions += client.on_crl(fetch(loop.transport, action))
        elif not isinstance(action, Audit):
            send(loop.transport, action)  # type: ignore[arg-type]
