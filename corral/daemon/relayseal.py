"""The `requestState` the gateway hands its client with a server's relayed request for
input (SEP-2322, corral/mcp/relay.py): the server's own state, sealed (HMAC-SHA256 under a
key drawn at start) over the client's name and tenant (a name is no identity: a token or
an agent may be made again under it for another tenant), the tool, the round, its expiry
and the requests relayed; answers are taken only to the requests it lists. The threats it
answers: docs/security.md; the protocol: docs/gateway.md#input-a-server-asks-for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any, NamedTuple

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.client import MAX_INPUT_ROUNDS


class Holder(NamedTuple):  # whom a state is sealed to: a gateway client
    name: str
    tenant: str | None


class SealedState(msgspec.Struct, array_like=True):
    client: str
    tenant: str | None
    tool: str
    round: int
    expires: float
    state: str | None
    # the input requests relayed with it, key -> method: the answers a call may bring
    # back with it (no others reach the server)
    asked: dict[str, str] = {}


_decode = msgspec.json.Decoder(SealedState)


class StateSeal:
    """Seals and opens the states of relayed input requests; `wait` is how long one is
    good for (`[gateway] input_wait`, read at each use)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def seal(self, client: Holder, tool: str, state: Any, opened: SealedState | None,
             wait: float, asked: dict[str, str]) -> str:
        """The state to give `client` with the server's input requests of a call of
        `tool` (`asked`: their keys and methods); `opened`: the one the call came with
        (its round is counted on)."""
        turn = opened.round + 1 if opened is not None else 1
        if turn > MAX_INPUT_ROUNDS:
            raise RpcError(jsonrpc.REFUSED,
                           f"{tool}: the server still asked for input after "
                           f"{MAX_INPUT_ROUNDS} rounds (corral's bound MAX_INPUT_ROUNDS): "
                           "given up")
        body = msgspec.json.encode(SealedState(client.name, client.tenant, tool, turn,
                                               time.time() + wait,
                                               state if isinstance(state, str) else None,
                                               asked))
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def open(self, client: Holder, tool: str, token: Any) -> SealedState:
        """The sealed state a call came back with, if it is this client's for this tool
        and still good; else refused (-32602), naming why."""
        if not isinstance(token, str):
            raise _invalid(tool, "requestState must be a string")
        body_part, _, mac_part = token.partition(".")
        try:
            body, mac = _unb64(body_part), _unb64(mac_part)
        except ValueError:
            raise _invalid(tool, "requestState is not one corral gave") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _invalid(tool, "requestState is not one corral gave")
        sealed = _decode.decode(body)
        if Holder(sealed.client, sealed.tenant) != client or sealed.tool != tool:
            raise _invalid(tool, f"requestState was not given to gateway client "
                                 f"{client.name} for {tool}")
        if sealed.expires < time.time():
            raise _invalid(tool, "requestState expired (older than [gateway] input_wait): "
                                 "call again without it")
        return sealed

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()


def answered(subject: str, responses: dict[str, Any], opened: SealedState | None,
             server: str | None, relay_roots: bool, unasked: bool = False) -> None:
    """Refuses (-32602, naming the key) a call's `inputResponses` that answer no input
    request corral relayed with the state it opened: without one, a key it does not
    list, or a roots/list answer to a server that does not relay roots. `unasked`:
    without a state, answers that are each an elicitation result alone
    (`elicitation_result`) are let through (a call of a client that is no agent's)."""
    if opened is None:
        # the key named is the first that is no elicitation result when those may pass
        key = next((k for k, v in responses.items()
                    if not (unasked and elicitation_result(v))), None)
        if key is None:
            return
        raise _invalid(subject, f"inputResponses {key!r} answers no input request corral "
                                "relayed (no requestState came with it)")
    for key in responses:
        method = opened.asked.get(key)
        if method is None:
            raise _invalid(subject, f"inputResponses {key!r} answers no input request "
                                    "corral relayed with this requestState")
        if method == "roots/list" and not relay_roots:
            raise _invalid(subject, f"inputResponses {key!r} answers roots/list, which "
                                    f"MCP server {server} does not relay (relay_roots is "
                                    "off: its roots are the operator's)")


ELICIT_ACTIONS = frozenset({"accept", "decline", "cancel"})
ELICIT_KEYS = frozenset({"action", "content", "_meta"})


def elicitation_result(answer: Any) -> bool:
    """Whether `answer` is an elicitation result and nothing else: an action, content
    of the values a form takes (string, number, boolean, list of strings), `_meta`. No
    other key nor nested object: a roots or sampling answer given this shape's action
    (say {"action": "accept", "roots": [...]}) must not pass for one, as a server that
    reads what it asked loosely would take it for what it asked."""
    if not isinstance(answer, dict) or not answer.keys() <= ELICIT_KEYS or \
            answer.get("action") not in ELICIT_ACTIONS:
        return False
    content = answer.get("content", {})
    return isinstance(content, dict) and isinstance(answer.get("_meta", {}), dict) and \
        all(_form_value(v) for v in content.values())


def _form_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, str | int | float | bool)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """What `_b64` made `text` of; any other spelling refused (ValueError): the decoder
    skips characters outside the alphabet and the unused low bits of the last one, so
    other strings than corral's decode to the same bytes."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if _b64(data) != text:
        raise ValueError("not the base64url corral writes")
    return data


def _invalid(tool: str, why: str) -> RpcError:
    return RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {tool}: {why}")
