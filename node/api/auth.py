"""Bearer tokens: the configuration keeps only their SHA-256; a request's token is
hashed and compared in constant time. Scopes: read, store (STOW-RS), admin."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from node.config import ApiToken

# What each scope also allows: admin reads; nothing else implies anything.
_IMPLIED = {"admin": {"admin", "read"}, "read": {"read"}, "store": {"store"}}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: the token's name and what it may do."""

    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        """True when the token's scopes allow `scope`."""
        return any(scope in _IMPLIED[s] for s in self.scopes)


def token_digest(token: str) -> str:
    """The SHA-256 of a token, as the configuration holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def identify(authorization: str | None, tokens: Sequence[ApiToken]) -> Caller | None:
    """The caller a `Authorization: Bearer ...` header names, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = token_digest(token.strip())
    found = None
    for candidate in tokens:  # compare against every token: no early exit to time
        if hmac.compare_digest(candidate.sha256, digest):
            found = candidate
    if found is None:
        return None
    return Caller(found.name, frozenset(found.scopes))
