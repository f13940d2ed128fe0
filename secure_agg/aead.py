"""Authenticated encryption of Shamir shares (AES-256-GCM).

The associated data binds each ciphertext to ``session_id || sender || receiver || stage``,
so a share cannot be replayed in another session, re-routed to another site or stage, or
altered without :class:`DecryptionFailed`. A random 96-bit nonce is prepended to the
ciphertext (both directions of a pair share one key, so nonces must not be counters).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionFailed
from .transcript import encode_fields

__all__ = ["associated_data", "encrypt", "decrypt"]

_NONCE_BYTES = 12


def associated_data(session_id: bytes, sender: str, receiver: str, stage: int) -> bytes:
    """Unambiguous encoding of ``session_id || sender || receiver || stage``."""
    return encode_fields(b"share", session_id, sender.encode(), receiver.encode(), stage.to_bytes(1, "big"))


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``nonce || AES-GCM(key, nonce, plaintext, ad)``."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, ciphertext: bytes, ad: bytes, *, what: str = "ciphertext") -> bytes:
    """Inverse of :func:`encrypt`; :class:`DecryptionFailed` naming ``what`` if it does not verify."""
    if len(ciphertext) < _NONCE_BYTES + 16:
        raise DecryptionFailed(f"{what} is truncated ({len(ciphertext)} bytes)")
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], ad)
    except InvalidTag:
        raise DecryptionFailed(f"{what} failed authentication (tampered, misrouted or from another session)") from None
