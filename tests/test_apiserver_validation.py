"""Pod spec verdicts are remembered by the spec's encoding (every pod of a ReplicaSet has the same
spec): a remembered verdict must name the same field and say the same as a fresh one, per object."""
from __future__ import annotations

import msgspec
import pytest

from schemas import RESOURCES, ApiError, Pod, ReplicaSet
from services.apiserver import validation


def _pod(name: str, container: str) -> Pod:
    return msgspec.convert({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                            "spec": {"containers": [{"name": container, "image": "i"}]}}, Pod)


def _refusal(obj, resource: str) -> ApiError:
    with pytest.raises(ApiError) as err:
        validation.validate(obj, RESOURCES[resource])
    return err.value


def test_remembered_verdicts_match_fresh_ones() -> None:
    validation._SPEC_VERDICTS.clear()
    first = _refusal(_pod("a", "Bad_Name"), "pods")
    assert first.field == "spec.containers[0].name"
    assert len(validation._SPEC_VERDICTS) == 1
    again = _refusal(_pod("b", "Bad_Name"), "pods")  # the same spec: the remembered verdict
    assert (again.field, again.message.replace('"b"', '"a"')) == (first.field, first.message)
    assert len(validation._SPEC_VERDICTS) == 1
    validation.validate(_pod("c", "good"), RESOURCES["pods"])  # a good spec passes, and is remembered
    validation.validate(_pod("d", "good"), RESOURCES["pods"])
    # The same bad spec in a template is named by its own path.
    rs = msgspec.convert({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r", "namespace": "default"},
                          "spec": {"selector": {"matchLabels": {"a": "b"}},
                                   "template": {"metadata": {"labels": {"a": "b"}},
                                                "spec": {"containers": [{"name": "Bad_Name", "image": "i"}]}}}},
                         ReplicaSet)
    assert _refusal(rs, "replicasets").field == "spec.template.spec.containers[0].name"


def test_the_memory_of_verdicts_is_bounded() -> None:
    validation._SPEC_VERDICTS.clear()
    for i in range(validation._SPEC_VERDICTS_MAX + 50):
        validation.validate(_pod(f"p{i}", f"c{i}"), RESOURCES["pods"])
    assert len(validation._SPEC_VERDICTS) == validation._SPEC_VERDICTS_MAX
