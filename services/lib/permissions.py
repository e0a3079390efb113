"""What each principal may publish and subscribe to on the bus (the NATS half of least privilege;
the API server's authorization table is the other half).

The API server learns who calls from the subject (DESIGN §3, docs/security.md): `flo.api.v1.<r>.<v>`
is the admin, `flo.api.v1.user.<p>.…` is principal p, `flo.api.v1.node.<n>.…` is node n. These
permissions make that true: nobody else can publish on a principal's subjects, and every principal
can subscribe only to its own inbox (`_INBOX.<principal>.>`; bus.py sets the prefix).
"""
from __future__ import annotations

from schemas import API_PREFIX
from schemas.bootstrap import TOKEN_SUBJECTS, join_subject

from .natsjwt import Permission, Permissions, ResponsePermission

WATCH_ACKS = "_FLO.watchack.>"  # watch flow control (services/apiserver/watch.py)
DISCOVERY = "$SRV.>"  # NATS micro: PING / INFO / STATS
NODE_SUBJECTS = "flo.node.{node}.>"  # logs, exec (services/lib/logs.py)
COMPONENTS = ("scheduler", "replicaset", "deployment", "gc", "endpoints", "nodelifecycle", "proxy")
ADMIN = "admin"
READER = "reader"
APISERVER = "apiserver"
HOLLOW = "hollow"  # a process simulating many nodes (tests, benchmarks, chaos)
_SECOND_NS = 1_000_000_000
# A responder may send this many messages to one request's reply subject: a followed log is a
# stream of frames to the requester's inbox (its lifetime is the stream's, up to a day).
_STREAM_REPLIES = ResponsePermission(max=1_000_000_000, ttl=24 * 3600 * _SECOND_NS)
_ONE_REPLY = ResponsePermission(max=1, ttl=60 * _SECOND_NS)


def inbox(principal: str) -> str:
    return f"_INBOX.{principal}"


def state_log_reader() -> list[str]:
    """The JetStream API calls that read KV buckets (`nats kv get/ls/watch/history`, `nats stream
    info`, nats-py's KV get and watch) and nothing that writes a stream, its messages or its config.
    Every stream of the account is one of Flotilla's buckets (a wildcard is a whole token: `KV_*`
    would be a literal)."""
    subjects = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
    for stream in ("*",):
        subjects += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
                     f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
                     f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
                     f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.API.CONSUMER.NAMES.{stream}",
                     f"$JS.API.CONSUMER.LIST.{stream}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
                     f"$JS.FC.{stream}.>"]
    return subjects


def for_principal(principal: str) -> Permissions:
    """The permissions of a built-in principal (node agents: `for_node`)."""
    if principal == APISERVER:  # the state log's only writer, and it answers everyone
        return Permissions(pub=Permission(allow=[">"]), sub=Permission(allow=[">"]))
    if principal == ADMIN:  # every API verb and discovery; reads the state log; may watch every subject
        # The admin may also delete consumers (the nats CLI cleans up after `kv ls/history`): it can
        # delete anything through the API anyway, and the watch cache re-creates its consumer.
        return Permissions(pub=Permission(allow=[f"{API_PREFIX}.*.*", "flo.node.*.>", DISCOVERY, WATCH_ACKS, TOKEN_SUBJECTS,
                                                 *state_log_reader(), "$JS.API.CONSUMER.DELETE.*.*"]),
                           sub=Permission(allow=[">"]), resp=_ONE_REPLY)
    if principal == READER:
        scoped = f"{API_PREFIX}.user.{READER}"
        return Permissions(pub=Permission(allow=[f"{scoped}.*.get", f"{scoped}.*.list", f"{scoped}.*.watch",
                                                 DISCOVERY, WATCH_ACKS, *state_log_reader()]),
                           sub=Permission(allow=[f"{inbox(READER)}.>"]), resp=_ONE_REPLY)
    if principal == HOLLOW:
        return Permissions(pub=Permission(allow=[f"{API_PREFIX}.node.*.>", WATCH_ACKS]),
                           sub=Permission(allow=[f"{inbox(HOLLOW)}.>", "flo.node.*.>", DISCOVERY]),
                           resp=_STREAM_REPLIES)
    # a component (scheduler, a controller, the proxy) or any other named client
    return Permissions(pub=Permission(allow=[f"{API_PREFIX}.user.{principal}.>", WATCH_ACKS]),
                       sub=Permission(allow=[f"{inbox(principal)}.>", DISCOVERY]), resp=_ONE_REPLY)


def node_principal(node: str) -> str:
    return f"node-{node}"


def for_node(node: str) -> Permissions:
    """A node agent: its node-scoped API subjects, its logs/exec subjects, its inbox; nothing else."""
    return Permissions(pub=Permission(allow=[f"{API_PREFIX}.node.{node}.>", WATCH_ACKS]),
                       sub=Permission(allow=[f"{inbox(node_principal(node))}.>", NODE_SUBJECTS.format(node=node),
                                             DISCOVERY]),
                       resp=_STREAM_REPLIES)


def bootstrap_principal(token_id: str) -> str:
    return f"bootstrap-{token_id}"


def for_bootstrap(token_id: str) -> Permissions:
    """A bootstrap token's user (schemas/bootstrap.py): one request, the exchange of the token for
    node credentials. Only the admin may ask for tokens (TOKEN_SUBJECTS)."""
    principal = bootstrap_principal(token_id)
    return Permissions(pub=Permission(allow=[join_subject(token_id)]),
                       sub=Permission(allow=[f"{inbox(principal)}.>"]))
