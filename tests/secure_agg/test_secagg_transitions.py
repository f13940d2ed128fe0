"""Every (stage, event) pair of both transition tables: allowed pairs advance, all others are refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from secagg_harness import Federation, Stepper

from fedquilt.secure_agg import (
    AdvertisementsRelay, Announce, ConsistencyRequest, ProtocolViolation, ServerSession, SharesRelay, SiteId, Stage,
    ThresholdNotMet, UnmaskRequest,
)

SITE = SiteId("site-00")
CLIENT_STAGES = [Stage.ANNOUNCE, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK, Stage.DONE,
                 Stage.FAILED]
SERVER_MESSAGES = {Stage.ANNOUNCE: Announce, Stage.SHARE_KEYS: AdvertisementsRelay,
                   Stage.MASKED_INPUT: SharesRelay, Stage.CONSISTENCY: ConsistencyRequest, Stage.UNMASK: UnmaskRequest}
CLIENT_NEXT = {Stage.ANNOUNCE: Stage.SHARE_KEYS, Stage.SHARE_KEYS: Stage.MASKED_INPUT,
               Stage.MASKED_INPUT: Stage.CONSISTENCY, Stage.CONSISTENCY: Stage.UNMASK, Stage.UNMASK: Stage.DONE}


@pytest.fixture(scope="module")
def reference(federation: Federation) -> Stepper:
    """A finished round whose messages serve as the out-of-order ones."""
    stepper = Stepper(federation)
    while stepper.result is None:
        stepper.step()
    return stepper


def _client_at(federation: Federation, stage: Stage) -> Stepper:
    if stage == Stage.FAILED:
        stepper = Stepper(federation).client_awaiting(SITE, Stage.SHARE_KEYS)
        with pytest.raises(ProtocolViolation):
            stepper.clients[SITE].handle(stepper.to_clients[Stage.ANNOUNCE][SITE])
        return stepper
    return Stepper(federation).client_awaiting(SITE, stage)


@pytest.mark.parametrize("message_stage", list(SERVER_MESSAGES))
@pytest.mark.parametrize("client_stage", CLIENT_STAGES)
def test_client_table(federation: Federation, reference: Stepper, client_stage: Stage, message_stage: Stage) -> None:
    stepper = _client_at(federation, client_stage)
    client = stepper.clients[SITE]
    assert client.stage == client_stage
    if client_stage == message_stage:
        reply = client.handle(stepper.to_clients[message_stage][SITE])
        assert reply.stage == (Stage.ADVERTISE_KEYS if message_stage == Stage.ANNOUNCE else message_stage)
        assert client.stage == CLIENT_NEXT[client_stage]
    else:
        message = reference.to_clients[message_stage][SITE]
        assert isinstance(message, SERVER_MESSAGES[message_stage])
        with pytest.raises(ProtocolViolation, match=f"stage {message_stage.name} message while at {client_stage.name}"):
            client.handle(message)
        assert client.stage == (Stage.DONE if client_stage == Stage.DONE else Stage.FAILED)


SERVER_ACTIONS: dict[str, tuple[Stage, Callable[[ServerSession], object]]] = {
    "start": (Stage.ANNOUNCE, ServerSession.start),
    "relay_advertisements": (Stage.ADVERTISE_KEYS, ServerSession.relay_advertisements),
    "route_shares": (Stage.SHARE_KEYS, ServerSession.route_shares),
    "request_consistency": (Stage.MASKED_INPUT, ServerSession.request_consistency),
    "request_unmask": (Stage.CONSISTENCY, ServerSession.request_unmask),
    "finish": (Stage.UNMASK, ServerSession.finish),
}
SERVER_STAGES = [Stage.ANNOUNCE, Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY,
                 Stage.UNMASK, Stage.DONE, Stage.FAILED]
SERVER_NEXT = {Stage.ANNOUNCE: Stage.ADVERTISE_KEYS, Stage.ADVERTISE_KEYS: Stage.SHARE_KEYS,
               Stage.SHARE_KEYS: Stage.MASKED_INPUT, Stage.MASKED_INPUT: Stage.CONSISTENCY,
               Stage.CONSISTENCY: Stage.UNMASK, Stage.UNMASK: Stage.DONE}


def _server_at(federation: Federation, stage: Stage) -> Stepper:
    if stage == Stage.FAILED:
        stepper = Stepper(federation)
        stepper.server.start()
        with pytest.raises(ThresholdNotMet, match="0 sites advertised keys"):
            stepper.server.relay_advertisements()
        return stepper
    return Stepper(federation).server_collecting(stage)


@pytest.mark.parametrize("action", list(SERVER_ACTIONS))
@pytest.mark.parametrize("server_stage", SERVER_STAGES)
def test_server_table(federation: Federation, server_stage: Stage, action: str) -> None:
    server = _server_at(federation, server_stage).server
    assert server.stage == server_stage
    expected, method = SERVER_ACTIONS[action]
    if expected == server_stage:
        assert method(server) is not None
        assert server.stage == SERVER_NEXT[server_stage]
    else:
        with pytest.raises(ProtocolViolation, match=f"cannot close stage {expected.name} while at {server_stage.name}"):
            method(server)
        assert server.stage == server_stage


@pytest.mark.parametrize("message_stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY,
                                           Stage.UNMASK])
@pytest.mark.parametrize("server_stage", SERVER_STAGES)
def test_server_receive_table(federation: Federation, reference: Stepper, server_stage: Stage,
                              message_stage: Stage) -> None:
    if server_stage == message_stage:
        stepper = Stepper(federation)
        while not (stepper.server.stage == server_stage and stepper.undelivered is not None):
            stepper.step()
        assert stepper.undelivered is not None
        reply = stepper.clients[SITE].handle(stepper.to_clients[stepper.undelivered][SITE])
        stepper.server.receive(SITE, reply)
        assert SITE not in stepper.server.pending
        with pytest.raises(ProtocolViolation, match="already heard"):
            stepper.server.receive(SITE, reply)
    else:
        stepper = _server_at(federation, server_stage)
        with pytest.raises(ProtocolViolation, match=f"stage {message_stage.name} message from {SITE} while collecting"):
            stepper.server.receive(SITE, reference.to_server[message_stage][SITE])
    assert stepper.server.stage == server_stage
