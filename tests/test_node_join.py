"""Node join with bootstrap tokens (services/apiserver/bootstrap.py, services/nodeagent/join.py,
flotilla/commands/token.py), against the conftest's nats-server with Flotilla's auth on and a real API
server started with `--bootstrap-issuer`. Node agents are real processes started with nothing but a
token (no --creds)."""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nacl.signing
import nats
import nats.errors
import pytest
from nats.aio.client import Client

import conftest
from conftest import AUTH, connect
from flotilla.commands import token as token_cmd
from flotilla.context import CliError, Context
from schemas import ApiError
from schemas.pod import Pod
from schemas.bootstrap import CREATE_SUBJECT, LIST_SUBJECT, join_subject
from services.apiserver.bootstrap import NOT_CONFIGURED
from services.lib import natsjwt, permissions
from services.lib.client import Api
from test_nodeagent_support import container_processes, remove_cgroups

pytestmark = pytest.mark.skipif(not AUTH, reason="FLOTILLA_TEST_AUTH=0: node join needs the bus's auth")

AGENT_FLAGS = ("--heartbeat-seconds", "1", "--stop-pods-on-exit", "--shutdown-grace-seconds", "2")


class Joinable:
    """An API server that can mint node credentials, an admin connection, and agents started with a token."""

    def __init__(self, url: str, admin: Client, tmp_path: Path, start_service: Callable[..., Any]):
        self.url, self.admin, self.tmp_path, self.start_service = url, admin, tmp_path, start_service
        self.issuer = natsjwt.Issuer.load(conftest._CREDENTIALS[url].issuer_path)
        self.agents: list[Any] = []

    async def request(self, subject: str, body: dict[str, Any], nc: Client | None = None) -> dict[str, Any]:
        reply = await (nc or self.admin).request(subject, json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    async def create_token(self, **body: Any) -> dict[str, Any]:
        reply = await self.request(CREATE_SUBJECT, body)
        assert reply["kind"] == "BootstrapToken", reply
        return reply

    def state(self, node: str) -> Path:
        return self.tmp_path / "agents" / node

    def agent(self, node: str, token: str) -> Any:
        proc = self.start_service("nodeagent", "--nats-url", self.url, "--node-name", node, "--state-dir",
                                  str(self.state(node)), "--bootstrap-token", token, *AGENT_FLAGS,
                                  nats=False, name=f"nodeagent-{node}-{len(self.agents)}")
        self.agents.append(proc)
        return proc

    async def bearer(self, token: str, **options: Any) -> Client:
        """A connection as a token's holder, the way join.py makes it."""
        token_id = natsjwt.decode(token, verify=False).jti
        kp = natsjwt.keypair(natsjwt.new_seed("user"))
        return await nats.connect(self.url, user_jwt_cb=lambda: token.encode(),
                                  signature_cb=lambda nonce: base64.b64encode(kp.sign(nonce.encode())),
                                  inbox_prefix=permissions.inbox(permissions.bootstrap_principal(token_id)),
                                  allow_reconnect=False, connect_timeout=5, **options)

    async def join(self, token: str, node: str, nc: Client | None = None) -> dict[str, Any]:
        token_id = natsjwt.decode(token, verify=False).jti
        own = nc is None
        nc = nc or await self.bearer(token)
        try:
            body = {"nodeName": node, "publicKey": natsjwt.public_key(natsjwt.new_seed("user"))}
            return await self.request(join_subject(token_id), body, nc)
        finally:
            if own:
                await nc.close()


@pytest.fixture
async def joinable(apiserver, nats_url: str, tmp_path: Path, start_service) -> AsyncIterator[Joinable]:
    await apiserver(1, "--bootstrap-issuer", str(conftest._CREDENTIALS[nats_url].issuer_path))
    admin = await connect(nats_url)
    j = Joinable(nats_url, admin, tmp_path, start_service)
    try:
        yield j
    finally:
        for proc in j.agents:
            proc.stop(grace=8)
        for pid in container_processes(str(tmp_path)):
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in j.agents:
            remove_cgroups(proc.argv[proc.argv.index("--node-name") + 1])
        await admin.close()


def verified(issuer: natsjwt.Issuer, jwt: str) -> Any:
    """The claims of a JWT whose signature is the issuer's signing key's (nacl directly: the nkeys
    KeyPair that natsjwt.decode(verify=True) builds from a public key alone cannot verify)."""
    claims = natsjwt.decode(jwt, verify=False)
    assert claims.iss == natsjwt.public_key(issuer.signing_seed)
    raw = base64.b32decode(claims.iss + "=" * (-len(claims.iss) % 8))
    head, body, sig = jwt.split(".")
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    nacl.signing.VerifyKey(raw[1:33]).verify(f"{head}.{body}".encode(), signature)
    return claims


async def exited(proc: Any, wait_for: Callable[..., Awaitable[Any]], timeout: float = 30) -> int:
    await wait_for(lambda: not proc.alive, timeout=timeout, what=f"{proc.name} to exit")
    return proc.proc.returncode


def ready(obj: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions)


async def test_a_node_joins_with_only_a_token_and_the_token_is_then_spent(joinable: Joinable, connect_api,
                                                                        wait_for) -> None:
    minted = await joinable.create_token(ttlSeconds=600, description="rack 4")
    token = minted["token"]
    claims = verified(joinable.issuer, token)  # a bearer token for one join, signed by the account's key
    assert claims.name == f"bootstrap-{minted['id']}" and claims.nats["bearer_token"] is True
    assert claims.nats["pub"]["allow"] == [join_subject(minted["id"])]

    agent = joinable.agent("joiner-1", token)
    api = await connect_api()

    async def node_ready() -> bool:
        try:
            return ready(await api.nodes.get("joiner-1"))
        except ApiError:
            return False

    await wait_for(node_ready, timeout=60, what="the joined node Ready")
    creds = joinable.state("joiner-1") / "node.creds"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert natsjwt.principal_of_creds(creds) == "node-joiner-1"
    assert agent.alive

    # It runs pods: their status updates come through its own credentials.
    pod = {"metadata": {"name": "joined-pod", "namespace": "default"},
           "spec": {"nodeName": "joiner-1", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "300"]}]}}
    await api.pods.create(msgspec.convert(pod, Pod))

    async def pod_ready() -> bool:
        p = await api.pods.get("joined-pod")
        return p.status.phase == "Running" and ready(p)

    await wait_for(pod_ready, timeout=60, what="the joined node's pod Running and Ready")

    # The record says who used it; the token itself is stored nowhere.
    listed = await joinable.request(LIST_SUBJECT, {})
    record = next(r for r in listed["items"] if r["id"] == minted["id"])
    assert record["usedBy"] == "joiner-1" and record["usedAt"] and record["description"] == "rack 4"
    assert "token" not in record

    # The same token again, for a second agent: refused, the agent exits with the server's message.
    second = joinable.agent("joiner-2", token)
    assert await exited(second, wait_for) != 0
    log = second.log_text()
    assert f"bootstrap token {minted['id']} was already used by node joiner-1 at {record['usedAt']}" in log
    assert "Traceback" not in log
    assert not (joinable.state("joiner-2") / "node.creds").exists()

    # A restarted agent uses its credentials; a token given again is ignored.
    agent.stop(grace=8)
    again = joinable.agent("joiner-1", token)
    await wait_for(lambda: "bootstrap token ignored" in again.log_text(), timeout=30, what="the token ignored")
    await wait_for(node_ready, timeout=30, what="the node Ready after its restart")
    assert again.alive

    await api.pods.delete("joined-pod")
    await wait_for(lambda: _gone(api, "joined-pod"), timeout=30, what="the pod deleted")


async def _gone(api: Api, name: str) -> bool:
    try:
        await api.pods.get(name)
        return False
    except ApiError as err:
        return err.reason == "NotFound"


async def test_a_joined_nodes_credentials_are_a_nodes_only(joinable: Joinable, nats_url: str, wait_for) -> None:
    minted = await joinable.create_token(nodeName="limited")
    # Join with a key of our own (what join.py does), then use the credentials we get.
    seed = natsjwt.new_seed("user")
    bearer = await joinable.bearer(minted["token"])
    try:
        reply = await joinable.request(join_subject(minted["id"]),
                                       {"nodeName": "limited", "publicKey": natsjwt.public_key(seed)}, bearer)
    finally:
        await bearer.close()
    assert reply["kind"] == "NodeCredentials" and reply["nodeName"] == "limited"
    # The winner asking again with its own key (its reply was lost) gets its credentials again;
    # anyone else, even under the same name, is refused.
    bearer = await joinable.bearer(minted["token"])
    try:
        again = await joinable.request(join_subject(minted["id"]),
                                       {"nodeName": "limited", "publicKey": natsjwt.public_key(seed)}, bearer)
    finally:
        await bearer.close()
    assert again["kind"] == "NodeCredentials"
    assert verified(joinable.issuer, again["jwt"]).sub == natsjwt.public_key(seed)
    other = await joinable.join(minted["token"], "limited")
    assert other["code"] == 403 and "was already used by node limited" in other["message"], other
    creds = natsjwt.write_creds(joinable.tmp_path / "limited.creds", reply["jwt"], seed)
    assert verified(joinable.issuer, reply["jwt"]).name == "node-limited"

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    node = await nats.connect(nats_url, user_credentials=str(creds), error_cb=on_error,
                              inbox_prefix=permissions.inbox("node-limited"), allow_reconnect=False)
    try:
        await node.publish("$KV.flotilla.pods.default.evil", b'{"evil": true}')
        await node.flush()
        await wait_for(lambda: any('permissions violation for publish to "$kv.flotilla.pods.default.evil"' in e
                                   for e in errors), timeout=10, what="a publish violation on $KV.flotilla")
        api = Api(node, node="limited", timeout=5, retries=0)
        pod = {"metadata": {"name": "sneaky", "namespace": "default"},
               "spec": {"nodeName": "limited", "containers": [{"name": "c", "image": "busybox"}]}}
        with pytest.raises(ApiError) as refused:
            await api.pods.create(msgspec.convert(pod, Pod))
        assert refused.value.reason == "Forbidden"
        # It cannot mint tokens either (only the admin publishes there).
        await node.publish(CREATE_SUBJECT, b"{}")
        await node.flush()
        await wait_for(lambda: any(f'permissions violation for publish to "{CREATE_SUBJECT}"' in e for e in errors),
                       timeout=10, what="a publish violation on token.create")
    finally:
        await node.close()


async def test_an_expired_token_is_refused_with_a_clear_message(joinable: Joinable, wait_for) -> None:
    # The API allows 60 s at least: mint an expired one with the same issuer, as the API server would.
    token_id = "expiredtoken0000"
    seed = natsjwt.new_seed("user")
    expired = int(time.time()) - 30
    token = joinable.issuer.user_jwt(permissions.bootstrap_principal(token_id), natsjwt.public_key(seed),
                                     permissions.for_bootstrap(token_id), expires_at=expired, bearer=True,
                                     jti=token_id)
    agent = joinable.agent("late-node", token)
    assert await exited(agent, wait_for) == 2
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expired))
    log = agent.log_text()
    assert (f"bootstrap token {token_id} expired at {at}; create a new one with `flotilla token create`") in log
    assert "Traceback" not in log


async def test_the_api_server_checks_the_record_not_only_nats(joinable: Joinable, nc: Client) -> None:
    """A token NATS would still accept but whose record says otherwise (expired, unknown) is refused."""
    kv = await nc.jetstream().key_value("flotilla-bootstrap")
    await kv.create("pastrecord000000", json.dumps({
        "id": "pastrecord000000", "expiresAt": "2020-01-01T00:00:00Z", "createdAt": "2020-01-01T00:00:00Z",
        "nodeName": None, "description": "", "usedBy": None, "usedAt": None}).encode())
    body = {"nodeName": "n", "publicKey": natsjwt.public_key(natsjwt.new_seed("user"))}
    reply = await joinable.request(join_subject("pastrecord000000"), body, nc)
    assert (reply["code"], reply["message"]) == (403, "bootstrap token pastrecord000000 expired at "
                                                      "2020-01-01T00:00:00Z")
    reply = await joinable.request(join_subject("neverminted00000"), body, nc)
    assert (reply["code"], reply["reason"], reply["message"]) == (403, "Forbidden", "unknown bootstrap token")


async def test_a_token_restricted_to_one_node_name_refuses_another(joinable: Joinable) -> None:
    minted = await joinable.create_token(nodeName="node-a")
    reply = await joinable.join(minted["token"], "node-b")
    assert reply["code"] == 403 and reply["reason"] == "Forbidden"
    assert reply["message"] == f"bootstrap token {minted['id']} may only join as node node-a, not node-b"
    # ... and the refusal did not spend it
    assert (await joinable.join(minted["token"], "node-a"))["kind"] == "NodeCredentials"


async def test_racing_joins_with_one_token_exactly_one_wins(apiserver, joinable: Joinable) -> None:
    # a second replica: the joins are spread over two API servers, and still only one wins
    await apiserver(1, "--bootstrap-issuer", str(conftest._CREDENTIALS[joinable.url].issuer_path))
    minted = await joinable.create_token()
    conns = [await joinable.bearer(minted["token"]) for _ in range(8)]
    try:
        replies = await asyncio.gather(*(joinable.join(minted["token"], f"racer-{i}", c)
                                         for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    won = [r for r in replies if r.get("kind") == "NodeCredentials"]
    lost = [r for r in replies if r.get("kind") == "Status"]
    assert len(won) == 1, replies
    spent = f"was already used by node {won[0]['nodeName']} at"
    assert len(lost) == 7 and all(r["code"] == 403 and spent in r["message"] for r in lost), lost


async def test_token_requests_are_validated(joinable: Joinable) -> None:
    for body, field in (({"ttlSeconds": 10}, "ttlSeconds"), ({"ttlSeconds": 86401}, "ttlSeconds"),
                        ({"ttlSeconds": "soon"}, "ttlSeconds"), ({"bogus": 1}, "bogus"),
                        ({"nodeName": "Not_A_Name"}, "nodeName")):
        reply = await joinable.request(CREATE_SUBJECT, body)
        assert (reply["code"], reply["reason"]) == (422, "Invalid"), (body, reply)
        assert reply["details"]["causes"][0]["field"] == field, (body, reply)
    minted = await joinable.create_token()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    bearer = await joinable.bearer(minted["token"], error_cb=on_error)
    try:
        bad_key = await joinable.request(join_subject(minted["id"]),
                                         {"nodeName": "n1", "publicKey": "UNOTAKEY"}, bearer)
        assert (bad_key["code"], bad_key["details"]["causes"][0]["field"]) == (422, "publicKey")
        # The token's holder can do nothing but join, not even list the tokens: the server drops the
        # request (no reply, no "no responders") and says why.
        with pytest.raises(nats.errors.TimeoutError):
            await bearer.request(LIST_SUBJECT, b"{}", timeout=2)
        assert any(f'permissions violation for publish to "{LIST_SUBJECT}"' in e for e in errors), errors
    finally:
        await bearer.close()
    # still unspent: the refusals above did not use it
    assert (await joinable.join(minted["token"], "n1"))["kind"] == "NodeCredentials"


async def test_without_an_issuer_node_join_is_not_configured(api, nats_url: str) -> None:
    admin = await connect(nats_url)
    try:
        reply = json.loads((await admin.request(CREATE_SUBJECT, b"{}", timeout=10)).data)
    finally:
        await admin.close()
    assert (reply["code"], reply["reason"], reply["message"]) == (503, "ServiceUnavailable", NOT_CONFIGURED)


async def test_flotilla_token_create_and_list(joinable: Joinable) -> None:
    parser = argparse.ArgumentParser()
    token_cmd.arguments(parser)

    async def run(*argv: str) -> tuple[str, str]:
        ctx = Context(parser.parse_args(argv), nc=joinable.admin, out=io.StringIO(), err=io.StringIO())
        ctx.args.nats_url, ctx.args.timeout = joinable.url, 10.0
        assert await token_cmd.run(ctx) == 0
        return ctx.out.getvalue(), ctx.err.getvalue()  # type: ignore[attr-defined]

    out, err = await run("create", "--ttl", "2h", "--node-name", "cli-node", "--description", "from the CLI")
    claims = verified(joinable.issuer, out.strip())
    assert claims.exp - claims.iat == 7200 and claims.name.startswith("bootstrap-")
    assert "python -m services.nodeagent" in err and "--node-name cli-node --bootstrap-token" in err
    out, _ = await run("list")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "NODE", "TTL", "USED-BY", "AGE", "DESCRIPTION"]
    assert any(r.split()[:4] == [claims.jti, "cli-node", "119m", "<none>"] and r.endswith("from the CLI")
               for r in rows), out
    # Any other identity is told at once that only the admin may (NATS would drop its request unanswered).
    ctx = Context(parser.parse_args(["list"]), nc=joinable.admin, api=Api(joinable.admin, user="reader"))
    with pytest.raises(CliError, match='user "reader" cannot manage bootstrap tokens: only the admin can'):
        await token_cmd.run(ctx)


async def test_an_agent_started_before_the_api_server_joins_once_it_answers(apiserver, nats_url: str,
                                                                           tmp_path: Path, start_service,
                                                                           connect_api, wait_for) -> None:
    """Under `flotilla up` agents and API servers start together: a join nobody answers yet is retried."""
    issuer = str(conftest._CREDENTIALS[nats_url].issuer_path)
    [first] = await apiserver(1, "--bootstrap-issuer", issuer)
    admin = await connect(nats_url)
    try:
        minted = json.loads((await admin.request(CREATE_SUBJECT, b'{"nodeName": "early"}', timeout=10)).data)
    finally:
        await admin.close()
    first.stop()
    j = Joinable(nats_url, await connect(nats_url), tmp_path, start_service)
    try:
        agent = j.agent("early", minted["token"])
        await wait_for(lambda: "no API server answers yet; retrying" in agent.log_text(), timeout=30,
                       what="the join retried while no API server answers")
        await apiserver(1, "--bootstrap-issuer", issuer)
        await wait_for(lambda: (j.state("early") / "node.creds").exists(), timeout=30, what="the node's creds")
        api = await connect_api()

        async def node_ready() -> bool:
            try:
                return ready(await api.nodes.get("early"))
            except ApiError:
                return False

        await wait_for(node_ready, timeout=60, what="the node Ready")
    finally:
        for proc in j.agents:
            proc.stop(grace=8)
        await j.admin.close()


BAD_BODIES = [b"", b"null", b"[]", b"\xff\xfe", b'{"ttlSeconds": 1e400}', b'{"nodeName": 7}',
              b'{"ttlSeconds": 900, "ttlSeconds": "x"}', b"{" * 5000, b'"' + b"a" * 100_000 + b'"',
              b"x" * (3 * 1024 * 1024 + 1)]


async def test_bad_bodies_get_a_status_and_the_server_keeps_serving(joinable: Joinable, nc: Client) -> None:
    for body in BAD_BODIES:
        for subject, client in ((CREATE_SUBJECT, joinable.admin), (LIST_SUBJECT, joinable.admin),
                                (join_subject("neverminted00000"), nc)):
            reply = json.loads((await client.request(subject, body, timeout=10)).data)
            if body == b"" and subject != join_subject("neverminted00000"):  # {}: every default
                assert reply["kind"] in ("BootstrapToken", "BootstrapTokenList"), reply
                continue
            assert reply["kind"] == "Status" and reply["code"] in (403, 413, 422), (subject, body[:20], reply)
    assert (await joinable.create_token())["kind"] == "BootstrapToken"
