"""MachineHealthCheck's judgement of one machine, and its selector (no API needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from appliance.clusters.healthcheck import MachineHealthCheckController, seconds, selector_of

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ago(s: float) -> str:
    return (NOW - timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")


MHC = {"spec": {"clusterName": "c", "nodeStartupTimeout": "10m",
                "selector": {"matchLabels": {"pool": "a"},
                             "matchExpressions": [{"key": "tier", "operator": "In",
                                                   "values": ["x", "y"]}]},
                "unhealthyConditions": [{"type": "Ready", "status": "False",
                                         "timeout": "300s"}]}}


def machine(created: float, node: str | None = None, infra_ready: float | None = None) -> dict:
    conditions = [{"type": "InfrastructureReady", "status": "True",
                   "lastTransitionTime": ago(infra_ready)}] if infra_ready is not None else []
    status: dict = {"conditions": conditions}
    if node:
        status["nodeRef"] = {"name": node}
    return {"metadata": {"name": "m", "creationTimestamp": ago(created)}, "status": status}


def node(ready: str, since: float) -> dict:
    return {"metadata": {"name": "n"}, "status": {"conditions": [
        {"type": "Ready", "status": ready, "lastTransitionTime": ago(since)}]}}


def test_go_durations() -> None:
    assert seconds("10m", 0) == 600 and seconds("1h30m", 0) == 5400
    assert seconds("300s", 0) == 300 and seconds("", 7) == 7 and seconds("nonsense", 7) == 7


def test_selector_with_labels_and_expressions() -> None:
    sel = selector_of(MHC)
    assert sel is not None and not sel.is_empty
    assert sel.matches({"pool": "a", "tier": "x"})
    assert not sel.matches({"pool": "a", "tier": "z"}) and not sel.matches({"tier": "x"})
    assert selector_of({"spec": {"selector": {}}}).is_empty  # type: ignore[union-attr]


def test_no_node_after_the_startup_timeout() -> None:
    judge = MachineHealthCheckController.problem
    assert judge(MHC, machine(created=700), {}, NOW).endswith("(NodeStartupTimeout)")
    assert judge(MHC, machine(created=300), {}, NOW) == ""
    # counted from when the infrastructure became ready, when known
    assert judge(MHC, machine(created=3600, infra_ready=60), {}, NOW) == ""


def test_node_gone_or_unhealthy_for_longer_than_the_timeout() -> None:
    judge = MachineHealthCheckController.problem
    assert "NodeNotFound" in judge(MHC, machine(900, node="n"), {}, NOW)
    assert "UnhealthyNode" in judge(MHC, machine(900, node="n"), {"n": node("False", 301)}, NOW)
    assert judge(MHC, machine(900, node="n"), {"n": node("False", 100)}, NOW) == ""
    assert judge(MHC, machine(900, node="n"), {"n": node("True", 1000)}, NOW) == ""
    # the guest's API did not answer: nothing is known, nothing is remediated
    assert judge(MHC, machine(900, node="n"), None, NOW) == ""
