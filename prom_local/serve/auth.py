"""Who may call the server: API keys (one from --api-key, or named ones from --api-key-file),
and the browser checks (Host, Origin, Content-Type) that keep web pages out.

A keys file holds one key per line as `name=key`; blank lines and `#` comments are skipped. The
name is the caller's identity in logs and metrics (and the owner of its batch jobs); the key never
appears anywhere but the file. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import re
import socket
from pathlib import Path

from ..errors import UsageError

DEFAULT_NAME = "default"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_KEY_LENGTH = 8
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def load_api_keys(path: Path) -> dict[str, str]:
    """name -> key from a keys file; a UsageError naming the file and line for anything wrong."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the API keys file ({getattr(exc, 'strerror', None) or exc})") from None
    keys: dict[str, str] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        name, sep, key = (part.strip() for part in line.partition("="))
        if not sep:
            raise UsageError(f"{where}: expected `name=key` (the key is not shown here)")
        if not NAME.fullmatch(name):
            raise UsageError(f"{where}: the name {name!r} must be 1-64 letters, digits, `_.@-`")
        check_key(key, f"{where}: the key of {name!r}")
        if name in keys:
            raise UsageError(f"{where}: the name {name!r} is already used on line {seen[name]}")
        if key in keys.values():
            raise UsageError(f"{where}: this key is already given to another name (each caller gets its own)")
        keys[name], seen[name] = key, number
    if not keys:
        raise UsageError(f"{path}: holds no key (expected `name=key` lines)")
    return keys


def check_key(key: str, what: str) -> str:
    """A key must be there, long enough, and printable ASCII (it travels in an HTTP header)."""
    if not key:
        raise UsageError(f"{what} is empty (an empty key would mean no authentication)")
    if len(key) < MIN_KEY_LENGTH:
        raise UsageError(f"{what} is shorter than {MIN_KEY_LENGTH} characters")
    if not all(33 <= ord(c) < 127 for c in key):
        raise UsageError(f"{what} holds spaces or characters outside printable ASCII")
    return key


class KeyRing:
    """The configured keys; `name_of(token)` compares against every key in constant time."""

    def __init__(self, keys: dict[str, str]):
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def name_of(self, token: bytes) -> str | None:
        found = None
        for name, key in self._keys:   # no early exit: which key matched must not show in the timing
            if hmac.compare_digest(token, key):
                found = name
        return found


def bearer_token(header: str) -> bytes:
    scheme, _, token = header.partition(" ")
    return token.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""


def split_host(value: str) -> str:
    """The host part of a Host header or an Origin's netloc, lower case, without the port."""
    value = value.strip().lower()
    if value.startswith("["):   # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(listen_host: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The Host header values the server answers to: the loopback names, the address it listens
    on (unless a wildcard), and the --allowed-host names."""
    hosts = set(LOOPBACK_NAMES)
    if listen_host not in ("0.0.0.0", "::", ""):
        hosts.add(split_host(listen_host if ":" not in listen_host else f"[{listen_host}]"))
    else:   # every interface: the machine's own name is one clients use, and no web page controls it
        hosts.add(socket.gethostname().lower())
    hosts.update(split_host(h) for h in extra)
    return frozenset(hosts)
