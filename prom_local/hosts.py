"""Host names as the network sees them: the one test of "this machine only", which decides both
whether `serve` may start without a key and whether a client warns before sending its key over
plain http."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """`host` (a name, an IPv4 address or an IPv6 one, bracketed or not) reaches only this machine:
    localhost, *.localhost, 127.0.0.0/8, ::1."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
