"""The host's record of a supervisor in control-plane VMs: what puts the host service in
the ``host`` role."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.controlplane.placement import Placement, PlacementError
from appliance.store.db import holds_objects, make_engine, migrate


def placement() -> Placement:
    return Placement(vms=3, vip="198.18.0.5", api_port=6443, node_token="plab-node-secret",
                     network_token="plab-net-secret")


def test_a_placement_is_kept_private_and_read_back(tmp_path: Path) -> None:
    assert Placement.load(tmp_path) is None  # no record: the supervisor is embedded
    placement().save(tmp_path)
    path = tmp_path / Placement.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = Placement.load(tmp_path)
    assert loaded == placement() and loaded.api_url == "https://198.18.0.5:6443"
    assert "secret" not in repr(loaded) and "secret" not in str(loaded)
    Placement.remove(tmp_path)
    assert Placement.load(tmp_path) is None


def test_a_bad_or_linked_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / Placement.FILE_NAME).write_text('{"vms": 2, "vip": "x", "api_port": 1, '
                                                '"node_token": "a", "network_token": "b"}')
    with pytest.raises(PlacementError, match="1 or 3"):
        Placement.load(tmp_path)
    (tmp_path / Placement.FILE_NAME).write_text("not json")
    with pytest.raises(PlacementError, match="does not hold"):
        Placement.load(tmp_path)
    (tmp_path / Placement.FILE_NAME).unlink()
    other = tmp_path / "elsewhere.json"
    placement().save(tmp_path)
    os.rename(tmp_path / Placement.FILE_NAME, other)
    os.symlink(other, tmp_path / Placement.FILE_NAME)
    with pytest.raises(PlacementError):
        Placement.load(tmp_path)


def test_a_store_holds_objects_only_once_something_is_in_it(tmp_path: Path) -> None:
    """A control-plane VM's supervisor waits for this before it serves (the move fills an
    empty database in one transaction)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db'}")
    try:
        assert not holds_objects(engine)  # no schema
        migrate(engine)
        assert not holds_objects(engine)  # the schema, nothing in it
        from appliance.kinds import default_registry
        from appliance.objects import ObjectService
        from appliance.store.repo import Store
        from appliance.vmservice.catalog import Catalog

        Catalog(ObjectService(Store(engine), default_registry([]))).ensure_defaults()
        assert holds_objects(engine)
    finally:
        engine.dispose()


def test_the_host_starts_only_control_plane_domains_that_are_shut_off() -> None:
    """With the floating IP silent, the host role starts the control-plane domains itself
    (appliance.service.HostService._keep_control_plane_up); running, paused and undefined
    ones are left alone."""
    from types import SimpleNamespace

    from appliance.service import start_stopped

    class Driver:
        def __init__(self) -> None:
            self.states = {"cp-1": "shutoff", "cp-2": "running", "cp-3": "paused"}
            self.started: list[str] = []

        def observe(self, name: str) -> SimpleNamespace | None:
            state = self.states.get(name)
            return None if state is None else SimpleNamespace(state=state)

        def ensure_power(self, name: str, state: str) -> bool:
            assert state == "running"
            self.started.append(name)
            return True

    driver = Driver()
    assert start_stopped(driver, ["cp-1", "cp-2", "cp-3", "cp-4"]) == ["cp-1"]
    assert driver.started == ["cp-1"]
