"""Writing files the appliance owns; the one implementation lives in ``hypervisor.files``
(the lower layer), so both layers write files the same careful way."""

from hypervisor.files import write_atomic

__all__ = ["write_atomic"]
