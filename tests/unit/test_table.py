"""meta.k8s.io Table output and the JSONPath subset of CRD printer columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.api.table import cell, column_definitions, columns_for, jsonpath, to_table
from appliance.kinds.core import CONFIGMAP, NODE
from appliance.kinds.registry import Kind, PrinterColumn, Version
from appliance.kinds.schema import top_level
from appliance.util.timefmt import rfc3339

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)

VM = {
    "apiVersion": "vmoperator.vmware.com/v1alpha2", "kind": "VirtualMachine",
    "metadata": {"name": "vm1", "namespace": "dev", "uid": "u1", "resourceVersion": "7",
                 "creationTimestamp": rfc3339(NOW - timedelta(minutes=5)),
                 "labels": {"pacific.lab/x": "gpu", "app": "web"},
                 "annotations": {"a.b/c": "d"}},
    "spec": {"className": "small", "powerState": "PoweredOn", "disks": [
        {"name": "root", "size": "10Gi"}, {"name": "data", "size": "20Gi"}]},
    "status": {"conditions": [{"type": "Ready", "status": "True"},
                              {"type": "Synced", "status": "False"}],
               "ips": ["10.0.0.1", "10.0.0.2"], "cpus": 2.0, "nested": {"a": [1, 2]}},
}


# -- jsonpath ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    (".spec.className", ["small"]),
    ("{.spec.className}", ["small"]),
    (".metadata.name", ["vm1"]),
    (".spec.disks[0].size", ["10Gi"]),
    (".spec.disks[1].name", ["data"]),
    (".spec.disks[-1].name", ["data"]),
    (".spec.disks[2].name", []),
    (".spec.disks[-3].name", []),
    (".spec.disks[*].name", ["root", "data"]),
    (".status.ips[*]", ["10.0.0.1", "10.0.0.2"]),
    (".status.ips[0]", ["10.0.0.1"]),
    ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
    ('.status.conditions[?(@.type=="Synced")].status', ["False"]),
    (".status.conditions[?(@.type=='Ready')].status", ["True"]),
    ('.status.conditions[?(@.type=="Gone")].status', []),
    (".metadata.labels.pacific\\.lab/x", ["gpu"]),
    (".metadata.annotations.a\\.b/c", ["d"]),
    (".metadata.labels.pacific.lab/x", []),
    (".spec.missing", []),
    (".spec.className.deeper", []),
    (".spec.className[0]", []),
    (".spec", [VM["spec"]]),
])
def test_jsonpath(path: str, expected: list[Any]) -> None:
    assert jsonpath(VM, path) == expected


def test_jsonpath_filter_on_nested_field() -> None:
    doc = {"items": [{"meta": {"kind": "a"}, "v": 1}, {"meta": {"kind": "b"}, "v": 2}]}
    assert jsonpath(doc, '.items[?(@.meta.kind=="b")].v') == [2]


def test_jsonpath_filter_compares_non_strings_as_text() -> None:
    doc = {"items": [{"n": 1, "v": "one"}, {"n": 2, "v": "two"}]}
    assert jsonpath(doc, ".items[?(@.n==2)].v") == ["two"]


# -- cells -------------------------------------------------------------------------------------


def test_date_cell_is_rendered_as_an_age() -> None:
    col = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp")
    assert cell(VM, col, NOW) == "5m"
    assert cell(VM, col, NOW + timedelta(days=2, minutes=-5)) == "2d"
    assert cell(VM, col, NOW + timedelta(hours=3)) == "3h5m"


def test_date_cell_that_is_not_a_timestamp_is_left_alone() -> None:
    col = PrinterColumn("When", type="date", json_path=".spec.className")
    assert cell(VM, col, NOW) == "small"


def test_missing_value_cell_is_none() -> None:
    assert cell(VM, PrinterColumn("X", json_path=".spec.nothing"), NOW) is None


def test_multiple_values_are_joined_with_commas() -> None:
    assert cell(VM, PrinterColumn("IPs", json_path=".status.ips[*]"), NOW) == \
        "10.0.0.1,10.0.0.2"
    assert cell(VM, PrinterColumn("Disks", json_path=".spec.disks[*].name"), NOW) == "root,data"


def test_integer_cell_and_structured_cells() -> None:
    assert cell(VM, PrinterColumn("CPUs", type="integer", json_path=".status.cpus"), NOW) == 2
    assert cell(VM, PrinterColumn("N", json_path=".status.nested"), NOW) == '{"a":[1,2]}'
    assert cell(VM, PrinterColumn("N", json_path=".status.nested.a"), NOW) == "[1,2]"


def test_computed_cell() -> None:
    col = PrinterColumn("Disks", type="integer", compute=lambda o: len(o["spec"]["disks"]))
    assert cell(VM, col, NOW) == 2


# -- columns -----------------------------------------------------------------------------------


def _kind(*cols: PrinterColumn) -> Kind:
    return Kind(group="vmoperator.vmware.com", kind="VirtualMachine", plural="virtualmachines",
                singular="virtualmachine", namespaced=True, short_names=("vm",),
                versions=(Version("v1alpha2", top_level(), storage=True, printer_columns=cols),))


COLUMNS = (
    PrinterColumn("Power-State", json_path=".spec.powerState"),
    PrinterColumn("Class", json_path=".spec.className", priority=1),
    PrinterColumn("Ready", json_path='.status.conditions[?(@.type=="Ready")].status'),
    PrinterColumn("GPU", json_path=".metadata.labels.pacific\\.lab/x", priority=1),
    PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp"),
)


def test_name_column_is_put_first() -> None:
    kind = _kind(*COLUMNS)
    cols = columns_for(kind, kind.versions[0])
    assert [c.name for c in cols] == ["Name", "Power-State", "Class", "Ready", "GPU", "Age"]
    assert cols[0].format == "name"


def test_name_column_is_not_doubled() -> None:
    cols = columns_for(CONFIGMAP, CONFIGMAP.versions[0])
    assert [c.name for c in cols] == ["Name", "Data", "Age"]


def test_kind_without_columns_gets_name_and_age() -> None:
    kind = _kind()
    cols = columns_for(kind, kind.versions[0])
    assert [(c.name, c.type, c.json_path) for c in cols] == [
        ("Name", "string", ".metadata.name"), ("Age", "date", ".metadata.creationTimestamp")]


def test_column_definitions_shape() -> None:
    defs = column_definitions((PrinterColumn("Name", format="name", json_path=".metadata.name",
                                             description="the name"),
                               PrinterColumn("Wide", priority=1, json_path=".x"),
                               PrinterColumn("When", type="date", compute=lambda o: "x")))
    assert defs == [
        {"name": "Name", "type": "string", "format": "name", "description": "the name",
         "priority": 0},
        {"name": "Wide", "type": "string", "format": "", "description": "", "priority": 1},
        {"name": "When", "type": "string", "format": "", "description": "", "priority": 0},
    ]


# -- to_table ----------------------------------------------------------------------------------


def test_table_shape_and_rows() -> None:
    created = rfc3339(datetime.now(UTC) - timedelta(minutes=5))
    vm = {**VM, "metadata": {**VM["metadata"], "creationTimestamp": created}}
    other = {**vm, "metadata": {**vm["metadata"], "name": "vm2", "labels": {}},
             "spec": {"powerState": "PoweredOff"}, "status": {}}
    table = to_table(_kind(*COLUMNS), "v1alpha2", [vm, other], list_rv="42")
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42"}
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "Power-State", "Class", "Ready", "GPU", "Age"]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 1, 0, 1, 0]
    assert [c["type"] for c in table["columnDefinitions"]][-1] == "date"
    first, second = table["rows"]
    # every column has a cell, priority columns included (kubectl hides them without -o wide)
    assert first["cells"] == ["vm1", "PoweredOn", "small", "True", "gpu", first["cells"][5]]
    assert first["cells"][5] in ("5m", "5m1s", "5m2s")
    assert second["cells"] == ["vm2", "PoweredOff", None, None, None, first["cells"][5]]


def test_rows_carry_partial_object_metadata_by_default() -> None:
    table = to_table(_kind(*COLUMNS), "v1alpha2", [VM])
    assert table["rows"][0]["object"] == {"kind": "PartialObjectMetadata",
                                          "apiVersion": "meta.k8s.io/v1",
                                          "metadata": VM["metadata"]}


def test_include_object_object_and_none() -> None:
    kind = _kind(*COLUMNS)
    assert to_table(kind, "v1alpha2", [VM], include_object="Object")["rows"][0]["object"] == VM
    assert "object" not in to_table(kind, "v1alpha2", [VM], include_object="None")["rows"][0]


def test_continue_token_and_headers_and_table_version() -> None:
    kind = _kind(*COLUMNS)
    table = to_table(kind, "v1alpha2", [VM], list_rv="9", continue_token="tok",
                     with_headers=False, table_version="v1beta1")
    assert table["metadata"] == {"resourceVersion": "9", "continue": "tok"}
    assert table["columnDefinitions"] == []
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert len(table["rows"][0]["cells"]) == 6


def test_empty_table() -> None:
    table = to_table(_kind(*COLUMNS), "v1alpha2", [])
    assert table["rows"] == []
    assert len(table["columnDefinitions"]) == 6


def test_unserved_version_is_refused() -> None:
    with pytest.raises(AssertionError):
        to_table(_kind(*COLUMNS), "v9", [VM])


def test_real_node_columns() -> None:
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "host1", "labels": {"pacific.lab/accelerator": "a100"},
                         "creationTimestamp": rfc3339(datetime.now(UTC) - timedelta(days=3))},
            "status": {"nodeInfo": {"kubeletVersion": "v1.31.0"},
                       "addresses": [{"type": "Hostname", "address": "host1"},
                                     {"type": "InternalIP", "address": "10.1.1.1"}]}}
    table = to_table(NODE, "v1", [node])
    names = [c["name"] for c in table["columnDefinitions"]]
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert row["Name"] == "host1"
    assert row["Age"] == "3d"
    assert row["Version"] == "v1.31.0"
    assert row["Accelerator"] == "a100"
    assert row["Internal-IP"] == "10.1.1.1"
