"""Strategic merge patch against the semantics of apimachinery's ``strategicpatch``
(and sig-api-machinery's strategic-merge-patch.md)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from appliance.kinds.core import NAMESPACE, NODE
from appliance.kinds.schema import array, integer, map_of, obj, preserve, string, string_map
from appliance.kinds.smp import StrategicPatchError, strategic_merge

PORT = obj({"containerPort": integer(), "protocol": string(), "name": string()})
CONTAINER = obj({
    "name": string(), "image": string(), "args": array(string()),
    "ports": array(PORT, merge_key="containerPort"),
    "env": array(obj({"name": string(), "value": string()}), merge_key="name"),
})
SCHEMA = obj({
    "metadata": obj({"labels": string_map(), "annotations": string_map(),
                     "finalizers": {**array(string()), "x-kubernetes-patch-strategy": "merge"}}),
    "spec": obj({
        "containers": array(CONTAINER, merge_key="name"),
        "tags": {**array(string()), "x-kubernetes-patch-strategy": "merge"},
        "args": array(string()),
        "items": array(obj({"name": string()})),
        "strategy": obj({
            "type": string(),
            "rollingUpdate": obj({"maxSurge": integer(), "maxUnavailable": integer()}),
            "recreate": obj({"grace": integer()}),
        }),
        "free": preserve(type="object"),
    }),
})


def merge(original: Any, patch: Any, schema: Any = SCHEMA) -> Any:
    """Apply ``patch``, checking that neither input is mutated."""
    before = copy.deepcopy(original), copy.deepcopy(patch)
    out = strategic_merge(original, patch, schema)
    assert (original, patch) == before
    return out


# -- lists with a merge key ---------------------------------------------------------------


def test_merge_key_list_merges_matching_elements_and_appends_new_ones() -> None:
    original = {"spec": {"containers": [
        {"name": "web", "image": "nginx:1", "args": ["-a"]},
        {"name": "log", "image": "tail:1"},
    ]}}
    patch = {"spec": {"containers": [
        {"name": "log", "image": "tail:2"},
        {"name": "sidecar", "image": "envoy"},
    ]}}
    assert merge(original, patch) == {"spec": {"containers": [
        {"name": "web", "image": "nginx:1", "args": ["-a"]},
        {"name": "log", "image": "tail:2"},
        {"name": "sidecar", "image": "envoy"},
    ]}}


def test_merge_key_list_element_fields_merge_recursively_with_item_schema() -> None:
    original = {"spec": {"containers": [{"name": "web", "image": "nginx", "ports": [
        {"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]}]}}
    patch = {"spec": {"containers": [{"name": "web", "ports": [
        {"containerPort": 443, "name": "https"}, {"containerPort": 8080}]}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "web", "image": "nginx",
                                                               "ports": [
        {"containerPort": 80, "protocol": "TCP"},
        {"containerPort": 443, "name": "https"},
        {"containerPort": 8080},
    ]}]}}


def test_null_inside_merge_key_element_deletes_that_field() -> None:
    original = {"spec": {"containers": [{"name": "web", "image": "nginx", "args": ["-a"]}]}}
    patch = {"spec": {"containers": [{"name": "web", "args": None}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "web",
                                                               "image": "nginx"}]}}


def test_new_merge_key_element_does_not_store_nulls_or_directives() -> None:
    patch = {"spec": {"containers": [{"name": "new", "image": None,
                                      "ports": [{"containerPort": 1}]}]}}
    assert merge({}, patch) == {"spec": {"containers": [{"name": "new",
                                                         "ports": [{"containerPort": 1}]}]}}


def test_patch_delete_element_removes_by_merge_key() -> None:
    original = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"},
                                        {"name": "c"}]}}
    patch = {"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "a", "image": "x"},
                                                              {"name": "c"}]}}


def test_patch_delete_element_of_absent_key_is_a_no_op() -> None:
    original = {"spec": {"containers": [{"name": "a"}]}}
    patch = {"spec": {"containers": [{"name": "zzz", "$patch": "delete"}]}}
    assert merge(original, patch) == original


def test_patch_delete_element_removes_every_entry_with_that_key() -> None:
    original = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b"},
                                        {"name": "a", "image": "2"}]}}
    patch = {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "b"}]}}


def test_patch_replace_element_replaces_the_whole_list() -> None:
    original = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}
    patch = {"spec": {"containers": [{"name": "c", "image": "y"}, {"$patch": "replace"}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "c", "image": "y"}]}}


def test_patch_replace_list_drops_other_directive_elements() -> None:
    original = {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    patch = {"spec": {"containers": [{"name": "a"}, {"name": "b", "$patch": "delete"},
                                     {"$patch": "replace"}]}}
    assert merge(original, patch) == {"spec": {"containers": [{"name": "a"}]}}


def test_merge_key_element_without_its_key_is_refused() -> None:
    with pytest.raises(StrategicPatchError, match="merge key 'name'"):
        strategic_merge({}, {"spec": {"containers": [{"image": "x"}]}}, SCHEMA)


def test_merge_key_list_of_scalars_is_refused() -> None:
    with pytest.raises(StrategicPatchError, match="must be objects"):
        strategic_merge({}, {"spec": {"containers": ["web"]}}, SCHEMA)


def test_merge_key_list_from_a_real_kind_schema() -> None:
    schema = NAMESPACE.storage_version.schema
    original = {"status": {"phase": "Active", "conditions": [
        {"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}}
    patch = {"status": {"conditions": [{"type": "B", "status": "True", "reason": "Fixed"}]}}
    assert merge(original, patch, schema)["status"]["conditions"] == [
        {"type": "A", "status": "True"}, {"type": "B", "status": "True", "reason": "Fixed"}]


def test_node_addresses_merge_on_type() -> None:
    schema = NODE.storage_version.schema
    original = {"status": {"addresses": [{"type": "Hostname", "address": "h1"}]}}
    patch = {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}
    assert merge(original, patch, schema)["status"]["addresses"] == [
        {"type": "Hostname", "address": "h1"}, {"type": "InternalIP", "address": "10.0.0.2"}]


def test_merge_key_list_under_a_map_value_schema() -> None:
    schema = obj({"groups": map_of(array(obj({"id": string(), "v": string()}), merge_key="id"))})
    original = {"groups": {"g": [{"id": "1", "v": "a"}]}}
    patch = {"groups": {"g": [{"id": "1", "v": "b"}, {"id": "2"}]}}
    assert merge(original, patch, schema) == {"groups": {"g": [{"id": "1", "v": "b"},
                                                               {"id": "2"}]}}


def test_merge_strategy_listed_with_retain_keys_still_merges() -> None:
    schema = obj({"l": {**array(obj({"k": string()}), merge_key="k"),
                        "x-kubernetes-patch-strategy": "merge,retainKeys"}})
    assert merge({"l": [{"k": "a"}]}, {"l": [{"k": "b"}]}, schema) == {"l": [{"k": "a"},
                                                                              {"k": "b"}]}


# -- lists of scalars ------------------------------------------------------------------------


def test_scalar_list_with_merge_strategy_is_a_set_union() -> None:
    original = {"spec": {"tags": ["a", "b"]}}
    patch = {"spec": {"tags": ["b", "c", "c"]}}
    assert merge(original, patch) == {"spec": {"tags": ["a", "b", "c"]}}


def test_scalar_set_list_missing_in_original_takes_patch() -> None:
    assert merge({"spec": {}}, {"spec": {"tags": ["x"]}}) == {"spec": {"tags": ["x"]}}


def test_delete_from_primitive_list_removes_every_match() -> None:
    original = {"metadata": {"finalizers": ["a", "b", "c", "b"]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zzz"]}}
    assert merge(original, patch) == {"metadata": {"finalizers": ["a", "c"]}}


def test_delete_from_primitive_list_together_with_additions() -> None:
    original = {"metadata": {"finalizers": ["a", "b"]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}}
    assert merge(original, patch) == {"metadata": {"finalizers": ["b", "c"]}}


def test_delete_from_primitive_list_of_missing_field_adds_nothing() -> None:
    assert merge({"metadata": {}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}) \
        == {"metadata": {}}


# -- lists without a strategy ------------------------------------------------------------------


def test_list_without_strategy_is_replaced() -> None:
    original = {"spec": {"args": ["a", "b"], "items": [{"name": "x"}, {"name": "y"}]}}
    patch = {"spec": {"args": ["c"], "items": [{"name": "y"}]}}
    assert merge(original, patch) == {"spec": {"args": ["c"], "items": [{"name": "y"}]}}


def test_list_without_schema_is_replaced() -> None:
    assert merge({"x": [1, 2]}, {"x": [3]}, None) == {"x": [3]}
    assert merge({"spec": {"free": {"l": [1]}}}, {"spec": {"free": {"l": [2]}}}) == \
        {"spec": {"free": {"l": [2]}}}


def test_list_without_strategy_drops_bare_directive_elements() -> None:
    assert merge({"spec": {"args": ["a"]}}, {"spec": {"args": ["b", {"$patch": "replace"}]}}) \
        == {"spec": {"args": ["b"]}}


# -- maps ------------------------------------------------------------------------------------


def test_null_deletes_a_key_and_missing_null_is_a_no_op() -> None:
    original = {"metadata": {"labels": {"a": "1", "b": "2"}}}
    patch = {"metadata": {"labels": {"a": None, "zzz": None, "c": "3"}}}
    assert merge(original, patch) == {"metadata": {"labels": {"b": "2", "c": "3"}}}


def test_nested_maps_merge() -> None:
    original = {"spec": {"strategy": {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}
    patch = {"spec": {"strategy": {"rollingUpdate": {"maxSurge": 2}}}}
    assert merge(original, patch) == {"spec": {"strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}}}


def test_map_patch_replace_takes_the_patch_literally() -> None:
    original = {"metadata": {"labels": {"a": "1", "b": "2"}}}
    patch = {"metadata": {"labels": {"$patch": "replace", "c": "3"}}}
    assert merge(original, patch) == {"metadata": {"labels": {"c": "3"}}}


def test_map_patch_delete_removes_the_map() -> None:
    original = {"spec": {"strategy": {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}}
    assert merge(original, patch) == {"spec": {"strategy": {"type": "RollingUpdate"}}}


def test_map_patch_merge_directive_is_an_ordinary_merge() -> None:
    original = {"metadata": {"labels": {"a": "1"}}}
    patch = {"metadata": {"labels": {"$patch": "merge", "b": "2"}}}
    assert merge(original, patch) == {"metadata": {"labels": {"a": "1", "b": "2"}}}


def test_unknown_map_directive_is_refused() -> None:
    with pytest.raises(StrategicPatchError, match="unknown patch directive 'explode'"):
        strategic_merge({}, {"spec": {"$patch": "explode"}}, SCHEMA)


def test_retain_keys_clears_fields_not_listed() -> None:
    original = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1},
                                      "recreate": {"grace": 3}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type", "recreate"], "type": "Recreate",
                                   "recreate": {"grace": 5}}}}
    assert merge(original, patch) == {"spec": {"strategy": {"type": "Recreate",
                                                            "recreate": {"grace": 5}}}}


def test_retain_keys_example_from_the_design_doc() -> None:
    original = {"union": {"foo": "a", "other": "b"}}
    patch = {"union": {"$retainKeys": ["another", "bar"], "another": "d", "bar": "c"}}
    assert merge(original, patch, None) == {"union": {"another": "d", "bar": "c"}}


def test_retain_keys_must_be_a_list() -> None:
    with pytest.raises(StrategicPatchError, match=r"\$retainKeys must be a list"):
        strategic_merge({"a": {"x": 1}}, {"a": {"$retainKeys": "x"}}, None)


def test_set_element_order_is_ignored() -> None:
    original = {"spec": {"containers": [{"name": "a"}, {"name": "b"}], "tags": ["x", "y"]}}
    patch = {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                      "$setElementOrder/tags": ["y", "x"],
                      "containers": [{"name": "b", "image": "i"}]}}
    assert merge(original, patch) == {"spec": {
        "containers": [{"name": "a"}, {"name": "b", "image": "i"}], "tags": ["x", "y"]}}


def test_scalar_replaces_map_and_map_replaces_scalar() -> None:
    assert merge({"a": {"b": 1}}, {"a": "s"}, None) == {"a": "s"}
    assert merge({"a": "s"}, {"a": {"b": None, "c": 1}}, None) == {"a": {"c": 1}}


# -- top level -----------------------------------------------------------------------------


def test_patch_must_be_an_object() -> None:
    for bad in ([{"a": 1}], "x", None, 3):
        with pytest.raises(StrategicPatchError, match="must be a JSON object"):
            strategic_merge({}, bad, SCHEMA)


def test_non_object_original_is_treated_as_empty() -> None:
    assert strategic_merge(None, {"a": 1}, None) == {"a": 1}
    assert strategic_merge(["x"], {"a": 1}, None) == {"a": 1}


def test_empty_patch_returns_an_equal_copy() -> None:
    original = {"metadata": {"labels": {"a": "1"}}, "spec": {"tags": ["t"]}}
    out = merge(original, {})
    assert out == original
    assert out is not original
    out["metadata"]["labels"]["a"] = "changed"
    assert original["metadata"]["labels"]["a"] == "1"


def test_kubectl_style_label_patch_on_a_builtin_kind() -> None:
    schema = NAMESPACE.storage_version.schema
    original = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "dev", "labels": {"team": "a"}},
                "spec": {"finalizers": ["kubernetes"]}}
    patch = {"metadata": {"labels": {"team": None, "env": "prod"}}}
    out = merge(original, patch, schema)
    assert out["metadata"] == {"name": "dev", "labels": {"env": "prod"}}
    assert out["spec"] == {"finalizers": ["kubernetes"]}
