"""A gateway token's digest, memoized (corral/daemon/tokendigests.py): the same digest as
hashing it anew, bounded, and a token is held only while its client is known."""

from __future__ import annotations

import hashlib

from corral.daemon.tokendigests import TokenDigests


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_digest_is_the_tokens_sha256_kept_or_not() -> None:
    d = TokenDigests(bound=4)
    assert d.of("a") == sha("a")
    assert len(d) == 0  # a token that named no client is not kept
    d.known("a", sha("a"))
    assert d.of("a") == sha("a") and len(d) == 1
    d.known("a", sha("a"))
    assert len(d) == 1


def test_the_oldest_token_goes_past_the_bound_and_a_gone_clients_at_once() -> None:
    d = TokenDigests(bound=2)
    for t in ("a", "b", "c"):
        d.known(t, sha(t))
    assert len(d) == 2
    d.forget(sha("a"))  # already dropped as the oldest: nothing more happens
    assert len(d) == 2
    d.forget(sha("b"))
    assert len(d) == 1
    d.forget(sha("b"))
    assert len(d) == 1
    assert [d.of(t) for t in "abc"] == [sha(t) for t in "abc"]
