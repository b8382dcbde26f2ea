"""criu's TCP leftovers undone for a tree that runs on (criu/_netlock.py): the run id that names the lock table, and
sockets taken out of repair mode through copies of their fds (this process's own sockets, really in repair mode)."""

import os
import socket

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _netlock as netlock


@pytest.mark.parametrize("first_line, expected", [
    ("(00.000000) CRIU run id = 35e67bec-9faf-4647-99ff-b731ace28fc7\n", "35e67bec-9faf-4647-99ff-b731ace28fc7"),
    ("(00.000000) CRIU run id = x; nft flush ruleset\n", None),  # never a table name that is not criu's
    ("(00.000000) Version: 4.2.1\n", None),
    ("", None),
])
def test_the_run_id_names_the_lock_table(tmp_path, first_line, expected):
    log = tmp_path / "dump.log"
    log.write_text(first_line + "(00.000100) more\n")
    assert netlock.run_id(str(log)) == expected
    assert netlock.run_id(str(tmp_path / "missing.log")) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="TCP_REPAIR needs CAP_NET_ADMIN")
def test_sockets_in_repair_mode_are_taken_out_of_it_and_others_left_alone():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted = listener.accept()[0]
    try:
        client.setsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR, 1)
        assert client.getsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR) == 1
        assert netlock.repair_off(os.getpid()) == 1, "one socket was in repair mode"
        assert client.getsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR) == 0
        assert accepted.getsockopt(socket.IPPROTO_TCP, netlock.TCP_REPAIR) == 0
        client.sendall(b"x")
        assert accepted.recv(1) == b"x", "the connection works again"
    finally:
        for sock in (client, accepted, listener):
            sock.close()
