"""Secure-aggregation messages on the wire: ``secure_agg``'s dataclasses <-> ``secagg.proto`` bytes.

``secure_agg`` is sans-IO and knows no protobuf; ``proto`` holds the messages and knows no
``secure_agg``. This module, above both, is the one place that maps one onto the other, for the
agent's and the coordinator's secure-sum glue alike.
"""

from __future__ import annotations

from typing import Any

from . import secure_agg as sa
from .proto import secagg_pb2 as spb
from .proto.codec import CodecError, parse_message, layout_from_pb, layout_to_pb


def _params_to_pb(p: Any) -> Any:
    return spb.SecAggParamsMsg(threshold=p.threshold, clip=p.clip, max_sites=p.max_sites, degree=p.degree or 0,
                               ring_bits=p.ring_bits, frac_bits=p.frac_bits or 0, share_threshold=p.share_threshold or 0)


def _params_from_pb(m: Any) -> Any:
    return sa.SecAggParams(threshold=m.threshold, clip=m.clip, max_sites=m.max_sites, degree=m.degree or None,
                              ring_bits=m.ring_bits, frac_bits=m.frac_bits,
                              share_threshold=m.share_threshold or None if m.degree else None)


def _ad_to_pb(a: Any) -> Any:
    return spb.KeyAdvertisementMsg(nonce=a.nonce, site=a.site, c_pk=a.c_pk, s_pk=a.s_pk, cert_pem=a.cert_pem,
                                   signature=a.signature)


def _ad_from_pb(m: Any) -> Any:
    return sa.KeyAdvertisement(m.nonce, sa.SiteId(m.site), m.c_pk, m.s_pk, m.cert_pem, m.signature)


def _share_to_pb(s: Any) -> Any:
    return spb.EncryptedShareMsg(sender=s.sender, receiver=s.receiver, ciphertext=s.ciphertext)


def _share_from_pb(m: Any) -> Any:
    return sa.EncryptedShare(sa.SiteId(m.sender), sa.SiteId(m.receiver), m.ciphertext)


def encode_secagg(msg: Any) -> bytes:
    """A secure_agg message dataclass -> bytes (MaskedInput excluded: it travels as an upload)."""
    if isinstance(msg, sa.Announce):
        out: Any = spb.AnnounceMsg(nonce=msg.nonce, cohort=list(msg.cohort), params=_params_to_pb(msg.params),
                                   layout=layout_to_pb(msg.layout.entries))
    elif isinstance(msg, sa.KeyAdvertisement):
        out = _ad_to_pb(msg)
    elif isinstance(msg, sa.AdvertisementsRelay):
        out = spb.AdvertisementsRelayMsg(nonce=msg.nonce, advertisements=[_ad_to_pb(a) for a in msg.advertisements])
    elif isinstance(msg, sa.EncryptedShares):
        out = spb.EncryptedSharesMsg(session_id=msg.session_id, sender=msg.sender,
                                     shares=[_share_to_pb(s) for s in msg.shares])
    elif isinstance(msg, sa.SharesRelay):
        out = spb.SharesRelayMsg(session_id=msg.session_id, receiver=msg.receiver, participants=list(msg.participants),
                                 shares=[_share_to_pb(s) for s in msg.shares])
    elif isinstance(msg, sa.ConsistencyRequest):
        out = spb.ConsistencyRequestMsg(session_id=msg.session_id, survivors=list(msg.survivors),
                                        dropped=list(msg.dropped))
    elif isinstance(msg, sa.ConsistencySignature):
        out = spb.ConsistencySignatureMsg(session_id=msg.session_id, sender=msg.sender, signature=msg.signature)
    elif isinstance(msg, sa.UnmaskRequest):
        out = spb.UnmaskRequestMsg(session_id=msg.session_id, survivors=list(msg.survivors), dropped=list(msg.dropped),
                                   signatures=[spb.SignerSignature(signer=s, signature=g) for s, g in msg.signatures])
    elif isinstance(msg, sa.RevealedShares):
        out = spb.RevealedSharesMsg(
            session_id=msg.session_id, sender=msg.sender,
            self_mask_shares=[spb.OwnedShare(owner=o, share=s) for o, s in msg.self_mask_shares],
            mask_key_shares=[spb.OwnedShare(owner=o, share=s) for o, s in msg.mask_key_shares])
    else:
        raise CodecError(f"cannot encode {type(msg).__name__}")
    return bytes(out.SerializeToString())



def decode_secagg(kind: str, data: bytes) -> Any:
    """Bytes -> the secure_agg message named ``kind`` (its class name), with precise errors."""
    try:
        if kind == "Announce":
            m = parse_message(spb.AnnounceMsg, data)
            return sa.Announce(m.nonce, tuple(sa.SiteId(s) for s in m.cohort), _params_from_pb(m.params),
                               sa.VectorLayout(tuple(layout_from_pb(m.layout))))
        if kind == "KeyAdvertisement":
            return _ad_from_pb(parse_message(spb.KeyAdvertisementMsg, data))
        if kind == "AdvertisementsRelay":
            m = parse_message(spb.AdvertisementsRelayMsg, data)
            return sa.AdvertisementsRelay(m.nonce, tuple(_ad_from_pb(a) for a in m.advertisements))
        if kind == "EncryptedShares":
            m = parse_message(spb.EncryptedSharesMsg, data)
            return sa.EncryptedShares(m.session_id, sa.SiteId(m.sender), tuple(_share_from_pb(s) for s in m.shares))
        if kind == "SharesRelay":
            m = parse_message(spb.SharesRelayMsg, data)
            return sa.SharesRelay(m.session_id, sa.SiteId(m.receiver), tuple(sa.SiteId(p) for p in m.participants),
                                  tuple(_share_from_pb(s) for s in m.shares))
        if kind == "ConsistencyRequest":
            m = parse_message(spb.ConsistencyRequestMsg, data)
            return sa.ConsistencyRequest(m.session_id, tuple(sa.SiteId(s) for s in m.survivors),
                                         tuple(sa.SiteId(s) for s in m.dropped))
        if kind == "ConsistencySignature":
            m = parse_message(spb.ConsistencySignatureMsg, data)
            return sa.ConsistencySignature(m.session_id, sa.SiteId(m.sender), m.signature)
        if kind == "UnmaskRequest":
            m = parse_message(spb.UnmaskRequestMsg, data)
            return sa.UnmaskRequest(m.session_id, tuple(sa.SiteId(s) for s in m.survivors),
                                    tuple(sa.SiteId(s) for s in m.dropped),
                                    tuple((sa.SiteId(g.signer), g.signature) for g in m.signatures))
        if kind == "RevealedShares":
            m = parse_message(spb.RevealedSharesMsg, data)
            return sa.RevealedShares(m.session_id, sa.SiteId(m.sender),
                                     tuple((sa.SiteId(o.owner), o.share) for o in m.self_mask_shares),
                                     tuple((sa.SiteId(o.owner), o.share) for o in m.mask_key_shares))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"malformed {kind}: {exc}") from None
    raise CodecError(f"unknown secure-aggregation message {kind!r}")
