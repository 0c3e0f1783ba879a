"""`serve`'s keys and exposure options, checked before anything loads: an empty key, or a
non-loopback --host without one, stops the server at start instead of running it open."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..hosts import is_loopback
from ..serve.auth import DEFAULT_NAME, check_key, load_api_keys

SERVER_KEY_VAR = "PROM_LOCAL_API_KEY"


def server_keys(api_key: str | None, api_key_file: Path | None) -> dict[str, str]:
    """name -> key from --api-key (or PROM_LOCAL_API_KEY) and --api-key-file; {} for none. An
    empty key, however given, is an error: it would otherwise mean "no authentication"."""
    if os.environ.get(SERVER_KEY_VAR) == "" and api_key is None:
        raise UsageError(f"{SERVER_KEY_VAR} is set but empty: set it to the key, or unset it")
    if api_key is not None and api_key_file is not None:
        raise UsageError("give --api-key or --api-key-file, not both")
    if api_key is not None:
        return {DEFAULT_NAME: check_key(api_key.strip(), "--api-key")}
    if api_key_file is None:
        return {}
    return _key_file(api_key_file)


def _key_file(path: Path) -> dict[str, str]:
    """A keys file (`name=key` lines), or a file holding just one key (named "default")."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--api-key-file {path}: cannot read it "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) == 1 and "=" not in lines[0]:
        return {DEFAULT_NAME: check_key(lines[0], f"{path}: the key")}
    if not lines:
        raise UsageError(f"{path}: holds no key (an empty key file would mean no authentication)")
    return load_api_keys(path)


def check_exposure(host: str, keys: dict[str, str], insecure_no_auth: bool) -> str | None:
    """Refuse to serve other machines without a key; a warning line to print, if any."""
    if keys or is_loopback(host):
        return None
    if not insecure_no_auth:
        raise UsageError(f"--host {host} serves other machines, and no API key is set: give "
                         "--api-key-file (or --api-key), or --insecure-no-auth to serve without one")
    return (f"WARNING: serving {host} WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who can "
            "reach this port can use the model")


def check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    if (certfile is None) != (keyfile is None):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
