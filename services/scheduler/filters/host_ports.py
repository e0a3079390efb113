"""No other pod on the node uses a requested host port (same protocol; 0.0.0.0 conflicts with any IP)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def host_ports_free(pod: PodInfo, node: NodeInfo) -> str | None:
    if not pod.host_ports or not node.host_ports:
        return None
    for ip, proto, port in pod.host_ports:
        for used_ip, used_proto, used_port in node.host_ports:
            if used_port == port and used_proto == proto and (ip == used_ip or "0.0.0.0" in (ip, used_ip)):
                return "node(s) didn't have free ports for the requested pod ports"
    return None
