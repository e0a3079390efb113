"""A cluster's credentials: a NATS operator, its system account and the Flotilla account, and one
user (a `.creds` file) per principal, fresh and random per cluster, kept in one directory.

    creds = ClusterCredentials.ensure(state / "auth")      # creates what is missing, keeps the rest
    server = NatsServer(..., extra_config=creds.server_config())
    creds.creds_path("scheduler")                          # for `--creds`
    creds.node_creds("node-1")                              # a node agent's, made on demand

The account's identity key signs only the account JWT; users are signed with a separate signing key
(`issuer.json`, which the API server holds to mint node credentials at join), so that key can be
rotated without a new account. The server resolves the two accounts from its config (a MEMORY
resolver): a new user needs no change on the server, and no restart.
"""
from __future__ import annotations

import json
from pathlib import Path

import msgspec

from services.lib import natsjwt, permissions
from services.lib.natsjwt import AccountLimits, AccountNats, Issuer, OperatorNats

ACCOUNT = "FLOTILLA"
BUILTIN = (permissions.APISERVER, *permissions.COMPONENTS, permissions.ADMIN, permissions.READER,
           permissions.HOLLOW)


class _Keys(msgspec.Struct):
    operator: str
    system: str
    account: str
    signing: str


class ClusterCredentials:
    def __init__(self, directory: Path, keys: _Keys, account_limits: AccountLimits):
        self.dir = directory
        self.keys = keys
        self.limits = account_limits
        self.issuer = Issuer(natsjwt.public_key(keys.account), keys.signing)

    @classmethod
    def ensure(cls, directory: str | Path, max_disk_bytes: int = natsjwt.UNLIMITED,
               max_memory_bytes: int = natsjwt.UNLIMITED) -> ClusterCredentials:
        d = Path(directory).absolute()
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        keys_path = d / "keys.json"
        if keys_path.exists():
            keys = msgspec.json.decode(keys_path.read_bytes(), type=_Keys)
        else:
            keys = _Keys(*(natsjwt.new_seed(kind).decode() for kind in ("operator", "account", "account", "account")))
            natsjwt.write_private(keys_path, msgspec.json.encode(keys).decode())
        # JetStream limits of the account: what the state log may take on disk and in memory.
        limits = AccountLimits(mem_storage=max_memory_bytes, disk_storage=max_disk_bytes, streams=natsjwt.UNLIMITED,
                               consumer=natsjwt.UNLIMITED)
        creds = cls(d, keys, limits)
        creds.issuer.save(d / "issuer.json")
        for principal in BUILTIN:
            if not creds.creds_path(principal).exists():
                creds.write_user(principal, permissions.for_principal(principal))
        creds.config_path.write_text(creds.server_config())
        return creds

    @staticmethod
    def rotate_signing_key(directory: str | Path) -> bool:
        """A new user signing key for the cluster in `directory`, and its user credentials removed
        (the next `ensure` remakes them). Operator and account stay, so the state log stays
        (JetStream keeps streams per account); the account JWT lists only the new key, so every old
        user JWT (joined nodes' too) is refused once nats-server reloads its config. False when
        there is nothing to rotate."""
        d = Path(directory).absolute()
        keys_path = d / "keys.json"
        if not keys_path.exists():
            return False
        keys = msgspec.json.decode(keys_path.read_bytes(), type=_Keys)
        keys = msgspec.structs.replace(keys, signing=natsjwt.new_seed("account").decode())
        natsjwt.write_private(keys_path, msgspec.json.encode(keys).decode())
        for old in (d / "creds").glob("*.creds"):
            old.unlink()
        return True

    @property
    def account(self) -> str:
        return self.issuer.account

    @property
    def system_account(self) -> str:
        return natsjwt.public_key(self.keys.system)

    @property
    def issuer_path(self) -> Path:
        return self.dir / "issuer.json"

    @property
    def config_path(self) -> Path:
        """nats-server config text to include: operator, accounts, resolver."""
        return self.dir / "nats-auth.conf"

    def creds_path(self, principal: str) -> Path:
        return self.dir / "creds" / f"{principal}.creds"

    def write_user(self, principal: str, perms: natsjwt.Permissions) -> Path:
        jwt, seed = self.issuer.new_user(principal, perms)
        return natsjwt.write_creds(self.creds_path(principal), jwt, seed)

    def node_creds(self, node: str) -> Path:
        """A node agent's credentials (compose and tests; a joining node gets its own at join)."""
        path = self.creds_path(permissions.node_principal(node))
        if not path.exists():
            self.write_user(permissions.node_principal(node), permissions.for_node(node))
        return path

    def server_config(self) -> str:
        operator_pub = natsjwt.public_key(self.keys.operator)
        operator_jwt = natsjwt.encode(self.keys.operator, operator_pub, "flotilla",
                                      OperatorNats(system_account=self.system_account))
        account_jwt = natsjwt.encode(self.keys.operator, self.account, ACCOUNT,
                                     AccountNats(limits=self.limits, signing_keys=[natsjwt.public_key(self.keys.signing)]))
        # The system account: no JetStream, default limits.
        system_jwt = natsjwt.encode(self.keys.operator, self.system_account, "SYS",
                                    AccountNats(limits=AccountLimits()))
        return "\n".join([
            "# Flotilla's decentralized auth (flotilla/credentials.py): every client needs a user JWT.",
            f"operator: {json.dumps(operator_jwt)}",
            f"system_account: {self.system_account}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f"  {self.account}: {json.dumps(account_jwt)}",
            f"  {self.system_account}: {json.dumps(system_jwt)}",
            "}",
        ]) + "\n"
