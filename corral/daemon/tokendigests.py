"""The SHA-256 of a gateway token, computed once per token rather than once per request
(docs/gateway.md): a memo of a pure function, so the lookup by digest still decides. Only
a token that named a client is kept, at most MAX_KNOWN: a flood of made-up tokens neither
fills it nor is answered in another time. A lookup keyed by the raw token compares its
text only on a full match of its hash (SipHash, keyed per process), so its time tells
nothing of a kept token that a guess does not already equal."""

from __future__ import annotations

import hashlib

MAX_KNOWN = 4096  # tokens remembered (one per live replica, and the tokens file's)


def hash_token(token: str) -> str:
    # (a header's bytes that are no UTF-8 come as surrogates: a digest, matching nothing)
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenDigests:
    def __init__(self, bound: int = MAX_KNOWN) -> None:
        self.bound = bound
        self._known: dict[str, str] = {}  # token -> its digest, oldest first
        self._token_of: dict[str, str] = {}  # and back (one token has each digest)

    def __len__(self) -> int:
        return len(self._known)

    def of(self, token: str) -> str:
        digest = self._known.get(token)
        return digest if digest is not None else hash_token(token)

    def known(self, token: str, digest: str) -> None:
        """`token` (whose digest is `digest`) named a client: remembered."""
        if token in self._known:
            return
        if len(self._known) >= self.bound:
            self._token_of.pop(self._known.pop(next(iter(self._known))), None)
        self._known[token] = digest
        self._token_of[digest] = token

    def forget(self, digest: str) -> None:
        """The client of `digest` is gone: its token is no longer held."""
        token = self._token_of.pop(digest, None)
        if token is not None:
            del self._known[token]
