"""X25519 key pairs and pairwise seeds bound to the session id and their purpose.

``seed = HKDF-SHA256(X25519(sk_i, pk_j), salt=session_id, info=label|purpose|context)``:
symmetric in i and j, different for every session, and separate for the two uses of a pair
(mask seeds vs share-encryption keys), so no key ever serves two purposes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Purpose", "KeyPair", "generate_key_pair", "private_key_from_bytes", "public_key_bytes", "shared_seed"]

_LABEL = b"fedquilt/secagg/v1|"
_KEY_BYTES = 32


class Purpose(enum.Enum):
    """What a pairwise seed is used for; part of the HKDF info."""

    MASK = b"mask"
    SHARE_ENCRYPTION = b"share-encryption"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 private key with its raw 32-byte public key."""

    private: X25519PrivateKey
    public: bytes

    def private_bytes(self) -> bytes:
        """Raw 32-byte private key (the secret that is Shamir-shared)."""
        return self.private.private_bytes_raw()


def generate_key_pair() -> KeyPair:
    """A fresh X25519 key pair from the OS's cryptographic randomness."""
    private = X25519PrivateKey.generate()
    return KeyPair(private, public_key_bytes(private))


def private_key_from_bytes(data: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key (as reconstructed from shares)."""
    return X25519PrivateKey.from_private_bytes(data)


def public_key_bytes(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key of ``private``."""
    return private.public_key().public_bytes_raw()


def shared_seed(private: X25519PrivateKey, peer_public: bytes, session_id: bytes,
                purpose: Purpose, context: bytes = b"") -> bytes:
    """32-byte pairwise seed; ValueError if ``peer_public`` is malformed or of low order."""
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=session_id,
                info=_LABEL + purpose.value + b"|" + context)
    return hkdf.derive(secret)
