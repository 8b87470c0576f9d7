"""Structural schemas: pruning unknown fields, defaulting and validation causes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from appliance.kinds.core import CONFIGMAP, RESOURCEQUOTA, SECRET
from appliance.kinds.schema import (
    CONDITION,
    apply_defaults,
    array,
    boolean,
    child,
    int_or_string,
    integer,
    map_of,
    obj,
    preserve,
    prune_unknown,
    quantity,
    string,
    string_map,
    top_level,
    validate,
)

# -- prune_unknown ---------------------------------------------------------------------------


def test_prune_removes_unknown_fields_and_reports_their_paths() -> None:
    schema = top_level(spec=obj({"cpus": integer(), "disks": array(obj({"size": string()}))}))
    value = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "bogus": 1},
             "spec": {"cpus": 2, "cpu": 3, "disks": [{"size": "1"}, {"size": "2", "sz": "3"}]},
             "extra": {"deep": True}}
    found = prune_unknown(value, schema)
    assert found == ["metadata.bogus", "spec.cpu", "spec.disks[1].sz", "extra"]
    assert value == {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
                     "spec": {"cpus": 2, "disks": [{"size": "1"}, {"size": "2"}]}}


def test_prune_nothing_unknown_returns_empty_list() -> None:
    schema = CONFIGMAP.storage_version.schema
    value = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "c", "labels": {"a": "b"}, "annotations": {"x": "y"}},
             "data": {"k": "v"}}
    before = copy.deepcopy(value)
    assert prune_unknown(value, schema) == []
    assert value == before


def test_prune_keeps_everything_under_preserve_unknown_fields() -> None:
    schema = obj({"spec": obj({"cloudConfig": preserve(type="object")})})
    value = {"spec": {"cloudConfig": {"users": [{"name": "x", "any": {"thing": 1}}]}}}
    before = copy.deepcopy(value)
    assert prune_unknown(value, schema) == []
    assert value == before


def test_prune_still_prunes_declared_properties_inside_preserve() -> None:
    schema = preserve(type="object", properties={"known": obj({"a": string()})})
    value = {"anything": 1, "known": {"a": "x", "b": "y"}}
    assert prune_unknown(value, schema) == ["known.b"]
    assert value == {"anything": 1, "known": {"a": "x"}}


def test_prune_walks_additional_properties_schemas() -> None:
    schema = obj({"groups": map_of(obj({"size": integer()}))})
    value = {"groups": {"a": {"size": 1, "colour": "red"}, "b": {"size": 2}}}
    assert prune_unknown(value, schema) == ["groups.a.colour"]
    assert value == {"groups": {"a": {"size": 1}, "b": {"size": 2}}}


def test_prune_keeps_keys_when_additional_properties_is_true() -> None:
    schema = {"type": "object", "properties": {"a": string()}, "additionalProperties": True}
    value = {"a": "x", "b": {"c": 1}}
    assert prune_unknown(value, schema) == []
    assert value == {"a": "x", "b": {"c": 1}}


def test_prune_object_without_properties_drops_every_field() -> None:
    value = {"o": {"a": 1, "b": 2}}
    assert prune_unknown(value, obj({"o": obj()})) == ["o.a", "o.b"]
    assert value == {"o": {}}


def test_prune_leaves_wrongly_typed_values_to_validation() -> None:
    schema = obj({"s": string(), "l": array(obj({"a": string()}))})
    value = {"s": {"x": 1}, "l": "not-a-list"}
    assert prune_unknown(value, schema) == []
    assert value == {"s": {"x": 1}, "l": "not-a-list"}


def test_prune_path_prefix_is_used() -> None:
    value = {"a": 1}
    assert prune_unknown(value, obj(), "spec") == ["spec.a"]


# -- apply_defaults --------------------------------------------------------------------------


def test_defaults_fill_missing_scalars_only() -> None:
    schema = obj({"a": string(default="x"), "b": integer(default=3),
                  "c": boolean(default=True), "d": string()})
    value: dict[str, Any] = {"b": 0, "c": False}
    assert apply_defaults(value, schema) is value
    assert value == {"a": "x", "b": 0, "c": False}


def test_defaults_nested_inside_a_defaulted_object() -> None:
    schema = obj({"spec": obj({"power": obj({"state": string(default="On"),
                                             "mode": string()}, default={})}, default={})})
    value: dict[str, Any] = {}
    apply_defaults(value, schema)
    assert value == {"spec": {"power": {"state": "On"}}}


def test_defaults_inside_existing_nested_objects() -> None:
    schema = obj({"spec": obj({"class": string(default="small"), "cpus": integer()})})
    value = {"spec": {"cpus": 4}}
    apply_defaults(value, schema)
    assert value == {"spec": {"cpus": 4, "class": "small"}}


def test_defaults_in_every_array_item() -> None:
    schema = obj({"ports": array(obj({"port": integer(), "protocol": string(default="TCP")}))})
    value = {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}
    apply_defaults(value, schema)
    assert value == {"ports": [{"port": 80, "protocol": "TCP"},
                               {"port": 53, "protocol": "UDP"}]}


def test_defaults_in_every_map_value() -> None:
    schema = obj({"disks": map_of(obj({"size": string(), "bus": string(default="virtio")}))})
    value = {"disks": {"root": {"size": "10Gi"}, "data": {"bus": "scsi"}}}
    apply_defaults(value, schema)
    assert value == {"disks": {"root": {"size": "10Gi", "bus": "virtio"},
                               "data": {"bus": "scsi"}}}


def test_default_values_are_copied_not_shared() -> None:
    schema = obj({"tags": array(string(), default=["a"])})
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    apply_defaults(first, schema)
    first["tags"].append("b")
    apply_defaults(second, schema)
    assert second == {"tags": ["a"]}
    assert schema["properties"]["tags"]["default"] == ["a"]


def test_defaults_from_a_real_kind() -> None:
    value = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    apply_defaults(value, SECRET.storage_version.schema)
    assert value["type"] == "Opaque"


def test_defaults_ignore_non_container_values() -> None:
    assert apply_defaults("x", obj({"a": string(default="d")})) == "x"
    assert apply_defaults([1, 2], array(integer())) == [1, 2]


# -- validate ----------------------------------------------------------------------------------


def test_valid_object_has_no_causes() -> None:
    schema = RESOURCEQUOTA.storage_version.schema
    value = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
             "spec": {"hard": {"cpu": "2", "memory": "4Gi", "pods": 10,
                               "requests.cpu": "500m"}}}
    assert validate(value, schema) == []


def test_map_value_type_error_names_the_key() -> None:
    causes = validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                       "data": {"a": "ok", "b": 1}}, CONFIGMAP.storage_version.schema)
    assert len(causes) == 1
    assert causes[0].field == "data.b"
    assert causes[0].reason == "FieldValueTypeInvalid"
    assert causes[0].message.startswith("Invalid value: 1: ")


def test_quantity_map_pattern_error_names_the_key() -> None:
    causes = validate({"spec": {"hard": {"cpu": "2", "x": "lots"}}},
                      RESOURCEQUOTA.storage_version.schema)
    assert [(c.field, c.reason) for c in causes] == [("spec.hard.x", "FieldValueTypeInvalid")]
    assert causes[0].message.startswith("Invalid value: 'lots': ")


@pytest.mark.parametrize("good", ["2Gi", "500m", "1", "1.5", ".5", "+3", "-1", "1e3", "2E-1",
                                  "2k", "10Ki", "7P", 0, 12])
def test_quantity_accepts(good: Any) -> None:
    assert validate({"q": good}, obj({"q": quantity()})) == []


@pytest.mark.parametrize("bad", ["", "2 Gi", "2GiB", "Gi", "1.2.3", "2K", "m", True, [], {}])
def test_quantity_refuses(bad: Any) -> None:
    causes = validate({"q": bad}, obj({"q": quantity()}))
    assert [c.field for c in causes] == ["q"]


def test_quantity_accepts_a_fractional_json_number() -> None:
    assert validate({"spec": {"hard": {"cpu": 0.5}}}, RESOURCEQUOTA.storage_version.schema) == []


def test_array_item_errors_carry_the_index() -> None:
    schema = obj({"spec": obj({"disks": array(obj({"name": string(), "size": integer()}))})})
    causes = validate({"spec": {"disks": [{"name": "a", "size": 1},
                                          {"name": 2, "size": "big"}]}}, schema)
    assert [c.field for c in causes] == ["spec.disks[1].name", "spec.disks[1].size"]
    assert {c.reason for c in causes} == {"FieldValueTypeInvalid"}


def test_required_fields_at_root_and_nested() -> None:
    schema = obj({"name": string(), "spec": obj({"a": string(), "b": string()},
                                                required=["a", "b"])}, required=["name"])
    causes = validate({"spec": {"b": "x"}}, schema)
    assert [(c.field, c.message, c.reason) for c in causes] == [
        ("name", "Required value", "FieldValueRequired"),
        ("spec.a", "Required value", "FieldValueRequired"),
    ]


def test_required_inside_array_items() -> None:
    schema = obj({"conditions": array(CONDITION)})
    causes = validate({"conditions": [{"type": "Ready", "status": "True"}, {"type": "X"}]},
                      schema)
    assert [(c.field, c.reason) for c in causes] == [("conditions[1].status",
                                                      "FieldValueRequired")]


def test_enum_cause() -> None:
    causes = validate({"s": "Maybe"}, obj({"s": string(enum=["True", "False", "Unknown"])}))
    assert len(causes) == 1
    assert causes[0].field == "s"
    assert causes[0].reason == "FieldValueNotSupported"
    assert causes[0].message.startswith("Unsupported value: ")
    assert causes[0].message.endswith('supported values: "True", "False", "Unknown"')
    assert "Maybe" in causes[0].message


@pytest.mark.parametrize("good", [0, 3, -7, "x", "50%", ""])
def test_int_or_string_accepts(good: Any) -> None:
    assert validate({"v": good}, obj({"v": int_or_string()})) == []


@pytest.mark.parametrize("bad", [1.5, True, None, [], {"a": 1}])
def test_int_or_string_refuses(bad: Any) -> None:
    causes = validate({"v": bad}, obj({"v": int_or_string()}))
    assert [(c.field, c.reason) for c in causes] == [("v", "FieldValueTypeInvalid")]


def test_nullable_accepts_null_and_plain_field_does_not() -> None:
    schema = obj({"n": string(nullable=True), "p": string()})
    assert validate({"n": None}, schema) == []
    assert validate({"n": "x"}, schema) == []
    causes = validate({"p": None}, schema)
    assert [(c.field, c.reason) for c in causes] == [("p", "FieldValueTypeInvalid")]


def test_nullable_metadata_timestamps() -> None:
    schema = CONFIGMAP.storage_version.schema
    assert validate({"metadata": {"name": "c", "creationTimestamp": None,
                                  "deletionTimestamp": None}}, schema) == []


def test_nullable_int_or_string_accepts_null() -> None:
    assert validate({"v": None}, obj({"v": int_or_string(nullable=True)})) == []


def test_other_keywords_give_field_value_invalid() -> None:
    schema = obj({"n": integer(minimum=1, maximum=3), "s": string(pattern="^[a-z]+$")})
    causes = validate({"n": 9, "s": "ABC"}, schema)
    assert [(c.field, c.reason) for c in causes] == [("n", "FieldValueInvalid"),
                                                     ("s", "FieldValueInvalid")]
    assert causes[0].message.startswith("Invalid value: 9: ")


def test_extensions_and_format_and_default_are_not_json_schema() -> None:
    schema = obj({"t": string(format="date-time", default="x"),
                  "l": array(obj({"k": string()}), merge_key="k")})
    assert validate({"t": "not a date", "l": [{"k": "a"}]}, schema) == []


def test_causes_are_sorted_by_path() -> None:
    schema = obj({"a": string(), "b": obj({"c": integer()}), "d": array(integer())})
    causes = validate({"d": ["x"], "b": {"c": "y"}, "a": 1}, schema)
    assert [c.field for c in causes] == ["a", "b.c", "d[0]"]


def test_long_invalid_values_are_shortened() -> None:
    causes = validate({"a": "x" * 500}, obj({"a": integer()}))
    value_part = causes[0].message.split(": ")[1]
    assert value_part.endswith("...")
    assert len(value_part) == 60


def test_the_same_schema_validates_repeatedly() -> None:
    schema = obj({"a": integer()})
    for _ in range(3):
        assert validate({"a": 1}, schema) == []
        assert len(validate({"a": "x"}, schema)) == 1


def test_string_map_refuses_non_string_values() -> None:
    causes = validate({"labels": {"a": "1", "b": True}}, obj({"labels": string_map()}))
    assert [c.field for c in causes] == ["labels.b"]


# -- child -------------------------------------------------------------------------------------


def test_child_navigation() -> None:
    items = obj({"k": string()})
    schema = obj({"l": array(items), "m": map_of(integer())})
    assert child(schema, "l") == schema["properties"]["l"]
    assert child(child(schema, "l"), 0) is items
    assert child(schema, "nope") is None
    assert child(schema["properties"]["m"], "anykey") == integer()
    assert child(None, "x") is None
    assert child(string(), 0) is None
