"""`flotilla token create|list`: bootstrap tokens for node join (kubeadm's `token create|list`;
docs/node-join.md). A token is shown once, by `create`; the API server keeps no copy of it."""
from __future__ import annotations

import argparse
import re

import msgspec
import nats.errors

from schemas.bootstrap import (CREATE_SUBJECT, DEFAULT_TTL_SECONDS, LIST_SUBJECT, BootstrapToken,
                                          BootstrapTokenList, ListTokensRequest, TokenRecord, TokenRequest,
                                          parse_rfc3339)
from services.lib.codec import encode, raise_for_status

from ..context import REQUEST_TIMEOUT, CliError, Context
from ..printers import NONE, Table, age, human_duration, now
from . import Command

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds of `900`, `900s`, `15m`, `1h`, `1d` (kubeadm's --ttl takes Go durations: these cover its use)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 15m, 1h, 900s): {text!r}")
    return int(m.group(1)) * _UNIT[m.group(2)]


def arguments(p: argparse.ArgumentParser) -> None:
    verbs = p.add_subparsers(dest="token_verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="mint a bootstrap token (printed once) for a node agent to join with")
    create.add_argument("--ttl", type=duration, default=DEFAULT_TTL_SECONDS,
                        help="how long the token can be used: 1m to 24h (default 15m)")
    create.add_argument("--node-name", help="the only node name the token may join as (default: any)")
    create.add_argument("--description", default="", help="a note shown by `flotilla token list`")
    verbs.add_parser("list", help="the bootstrap tokens of the last 24 hours (never the tokens themselves)")


async def _request(ctx: Context, subject: str, body: bytes) -> bytes:
    assert ctx.nc is not None
    user = ctx.api.user if ctx.api is not None else None
    if user is not None:  # NATS would drop the request unanswered: say why at once instead
        raise CliError(f'user "{user}" cannot manage bootstrap tokens: only the admin can (use the admin\'s context)')
    timeout = min(REQUEST_TIMEOUT, ctx.timeout)
    try:
        reply = await ctx.nc.request(subject, body, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise CliError(f"no API server answers at {ctx.args.nats_url} (is Flotilla running? try `flotilla status`)") \
            from None
    except nats.errors.TimeoutError:
        raise CliError(f"the API server did not answer within {timeout:g}s") from None
    raise_for_status(reply.data)
    return reply.data


async def run(ctx: Context) -> int:
    if ctx.args.token_verb == "create":
        req = TokenRequest(ttl_seconds=ctx.args.ttl, node_name=ctx.args.node_name, description=ctx.args.description)
        token = msgspec.json.decode(await _request(ctx, CREATE_SUBJECT, encode(req)), type=BootstrapToken)
        ctx.print(token.token)
        name = ctx.args.node_name or "<name>"
        ctx.warn(f"bootstrap token {token.id} expires at {token.expires_at} and joins one node"
                 f"{' (' + ctx.args.node_name + ')' if ctx.args.node_name else ''}; start it with:\n"
                 f"  python -m services.nodeagent --nats-url {ctx.args.nats_url} --node-name {name} "
                 f"--bootstrap-token <token>")
        return 0
    tokens = msgspec.json.decode(await _request(ctx, LIST_SUBJECT, encode(ListTokensRequest())),
                                 type=BootstrapTokenList)
    ctx.print("\n".join(Table(["ID", "NODE", "TTL", "USED-BY", "AGE", "DESCRIPTION"]).render(
        [_row(r) for r in tokens.items])))
    return 0


def _row(r: TokenRecord) -> list[str]:
    left = parse_rfc3339(r.expires_at) - now().timestamp()
    ttl = human_duration(left) if left > 0 else "expired"
    return [r.id, r.node_name or "*", ttl, r.used_by or NONE, age(r.created_at), r.description or NONE]


COMMANDS = [Command("token", "Create and list bootstrap tokens for node join", arguments, run)]
