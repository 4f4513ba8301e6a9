"""Fixtures shared by the unit tests."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def sender():
    """A non-blocking UDP socket on 127.0.0.1: the media port's socket, for tests that send from one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()
