"""nodeSelector and required node affinity (matchExpressions In/NotIn/Exists/DoesNotExist/Gt/Lt,
matchFields on metadata.name); terms are ORed, expressions within a term ANDed."""
from __future__ import annotations

from schemas.pod import NodeSelectorRequirement, NodeSelectorTerm

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def requirement_matches(req: NodeSelectorRequirement, labels: dict[str, str]) -> bool:
    op, present = req.operator, req.key in labels
    if op == "In":
        return present and labels[req.key] in req.values
    if op == "NotIn":
        return not present or labels[req.key] not in req.values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and req.values:
        try:
            have, want = int(labels[req.key]), int(req.values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def term_matches(term: NodeSelectorTerm, node: NodeInfo) -> bool:
    if not term.match_expressions and not term.match_fields:
        return False  # an empty term matches nothing, as in Kubernetes
    labels = node.node.metadata.labels
    fields = {"metadata.name": node.name}
    return all(requirement_matches(r, labels) for r in term.match_expressions) and \
        all(requirement_matches(r, fields) for r in term.match_fields)


def matches_node_affinity(pod: PodInfo, node: NodeInfo) -> str | None:
    spec = pod.pod.spec
    labels = node.node.metadata.labels
    for k, v in spec.node_selector.items():
        if labels.get(k) != v:
            return "node(s) didn't match Pod's node affinity/selector"
    aff = spec.affinity.node_affinity if spec.affinity else None
    required = aff.required_during_scheduling_ignored_during_execution if aff else None
    if required is not None and not any(term_matches(t, node) for t in required.node_selector_terms):
        return "node(s) didn't match Pod's node affinity/selector"
    return None
