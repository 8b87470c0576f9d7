"""tests.support.listeners reads a process's listening sockets from /proc."""

from __future__ import annotations

import ipaddress
import os
import socket

from tests.support.listeners import _address, listeners


def test_addresses_in_proc_net_byte_order() -> None:
    assert _address("0100007F:1F90") == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert _address("00000000000000000000000001000000:0035") == (
        ipaddress.ip_address("::1"), 53)
    assert _address("0000000000000000FFFF00000100007F:01BB") == (
        ipaddress.ip_address("::ffff:127.0.0.1"), 443)


def test_our_own_listening_sockets_are_found_and_a_connected_one_is_not() -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.connect(("127.0.0.1", 9))
    try:
        found = {(x.protocol, str(x.address), x.port, x.beyond_loopback)
                 for x in listeners(os.getpid())}
        assert ("tcp", "127.0.0.1", tcp.getsockname()[1], False) in found
        assert ("udp", "0.0.0.0", udp.getsockname()[1], True) in found
        assert not any(port == peer.getsockname()[1] for _, _, port, _ in found)
    finally:
        for s in (tcp, udp, peer):
            s.close()
