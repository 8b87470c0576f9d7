"""Under TCG, the VM Service boots guest kernels with ``mitigations=off`` (an emulated CPU
never speculates, and page-table isolation flushes TCG's TLB on every system call);
under KVM the command line is the image's own."""

from __future__ import annotations

import pytest

from hypervisor.domain import tcg_cmdline


@pytest.mark.parametrize(("given", "expected"), [
    ("root=UUID=1 ro console=ttyS0", "root=UUID=1 ro console=ttyS0 mitigations=off"),
    ("", "mitigations=off"),
    ("root=/dev/vda mitigations=auto", "root=/dev/vda mitigations=auto"),  # the image decided
])
def test_tcg_command_lines_turn_mitigations_off_unless_the_image_says(given: str,
                                                                      expected: str) -> None:
    assert tcg_cmdline(given) == expected
