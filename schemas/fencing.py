"""The fence a leader's writes carry: which Lease it leads by and in which term (docs/api.md, "Fencing").

A leader-elected component sends the request header

    Flotilla-Fence: <namespace>/<lease>;holder=<identity>;term=<leaseTransitions>

on every write. The API server reads that Lease from the state log and refuses the write (409
Conflict, "fenced: ...") unless the Lease is still held by that identity in that term, so a leader
that was paused or cut off past its lease cannot overwrite what its successor did. Requests without
the header (people, the CLI, node agents) are not fenced.
"""
from __future__ import annotations

import msgspec

FENCE_HEADER = "Flotilla-Fence"
FENCED_PREFIX = "fenced: "


class Fence(msgspec.Struct, frozen=True):
    namespace: str
    lease: str
    holder: str
    term: int

    def header(self) -> str:
        return f"{self.namespace}/{self.lease};holder={self.holder};term={self.term}"

    @classmethod
    def parse(cls, value: str) -> "Fence":
        """ValueError when malformed. The holder is taken between the first `;holder=` and the last
        `;term=`, so an identity containing `;` or `=` still round-trips."""
        head, sep, rest = value.partition(";holder=")
        holder, sep2, term = rest.rpartition(";term=")
        namespace, slash, lease = head.partition("/")
        if not (sep and sep2 and slash and namespace and lease and holder) or not term.isdigit():
            raise ValueError(f"malformed {FENCE_HEADER} header {value!r}: want <namespace>/<lease>;holder=<id>;term=<n>")
        return cls(namespace, lease, holder, int(term))
