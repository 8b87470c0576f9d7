"""Shared fixtures. Test tiers: unit (fakes only), api (a real host service on
loopback driven by real kubectl and the Kubernetes Python client), e2e (real
libvirt, Open vSwitch and VMs)."""

from tests.support.postgres import postgres_server  # noqa: F401 - a fixture
