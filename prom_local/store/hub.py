"""The Hugging Face hub's failures, in words a user can act on (used by pull and by convert)."""

from __future__ import annotations

from ..errors import DownloadError


def is_connection_error(exc: BaseException) -> bool:
    """Offline mode or no network, whichever HTTP library this huggingface-hub version uses."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"OfflineModeIsEnabled", "ConnectError", "ConnectionError", "TimeoutException",
                         "NetworkError", "Timeout", "ProxyError"})


def hub_error(exc: BaseException, what: str) -> DownloadError | None:
    """A user-facing message for the hub's own errors (missing repo, revision, file; gated repo)."""
    kind = type(exc).__name__
    if kind == "GatedRepoError":
        return DownloadError(f"{what}: the repo is gated; accept its terms on the hub and log in "
                             "(`hf auth login`, or set HF_TOKEN)")
    if kind == "RepositoryNotFoundError":
        return DownloadError(f"{what}: no such repo on the hub (or it is private: log in with `hf auth login` "
                             "or set HF_TOKEN)")
    if kind == "RevisionNotFoundError":
        return DownloadError(f"{what}: no such revision")
    if kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return DownloadError(f"{what}: no such file in the repo")
    if kind == "HfHubHTTPError" or kind.endswith("HTTPError"):
        return DownloadError(f"{what}: the hub answered with an error: {exc}")
    return None


def offline_message(what: str, exc: BaseException | None, hint: str = "give a local folder instead") -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or (exc is not None and type(exc).__name__ == "OfflineModeIsEnabled"):
        why, fix = "offline mode is on (HF_HUB_OFFLINE=1)", "unset HF_HUB_OFFLINE to download it"
    else:
        why = f"the hub cannot be reached ({type(exc).__name__ if exc else 'no network'})"
        fix = f"check the network (and HF_ENDPOINT={constants.ENDPOINT}) and retry"
    return f"{what}: {why}, and it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}). {fix}, or {hint}"
