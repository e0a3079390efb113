"""Node join (Kubernetes' bootstrap tokens on NATS): the subjects and the plain-JSON messages of
`flo.bootstrap.v1.token.create|list` (the admin) and `flo.bootstrap.v1.join.<token id>` (a token's
holder), served beside the API by the API server (services/apiserver/bootstrap.py)."""
from __future__ import annotations

import calendar
import time

import msgspec

BOOTSTRAP_PREFIX = "flo.bootstrap.v1"
CREATE_SUBJECT = f"{BOOTSTRAP_PREFIX}.token.create"
LIST_SUBJECT = f"{BOOTSTRAP_PREFIX}.token.list"
TOKEN_SUBJECTS = f"{BOOTSTRAP_PREFIX}.token.>"
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86400
DEFAULT_TTL_SECONDS = 900


def join_subject(token_id: str) -> str:
    return f"{BOOTSTRAP_PREFIX}.join.{token_id}"


class _Strict(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    pass


class TokenRequest(_Strict):
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    node_name: str | None = None  # the only node name the token may join as
    description: str = ""


class ListTokensRequest(_Strict):
    pass


class JoinRequest(_Strict):
    node_name: str
    public_key: str  # the node's own user nkey (U…): its seed stays on the node


class TokenRecord(msgspec.Struct, rename="camel", kw_only=True):
    """What the bucket keeps per token (no secret: the token itself is never stored)."""
    id: str
    expires_at: str
    created_at: str
    node_name: str | None = None
    description: str = ""
    used_by: str | None = None
    used_at: str | None = None
    # The public key the winner sent (not a secret): the same node asking again with the same key
    # (its reply was lost) gets its credentials again; only the key's holder can use them.
    used_key: str | None = None


class BootstrapToken(msgspec.Struct, tag_field="kind", tag="BootstrapToken", rename="camel", kw_only=True):
    id: str
    expires_at: str
    token: str


class BootstrapTokenList(msgspec.Struct, tag_field="kind", tag="BootstrapTokenList", kw_only=True):
    items: list[TokenRecord]


class NodeCredentials(msgspec.Struct, tag_field="kind", tag="NodeCredentials", rename="camel", kw_only=True):
    node_name: str
    jwt: str


def rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(unix)))


def parse_rfc3339(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
