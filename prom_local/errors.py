"""Every error a user can cause and every exit code, in one place, so the CLI and TUI can show them
without tracebacks. Errors that belong to one subsystem (RemoteError, RubricStoreError, ...) are
defined beside it, but take their code from ExitCode here."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes, all of them (docs/formats.md's "Exit codes" table lists them for users)."""

    OK = 0
    FAILURE = 1          # any other user-caused failure: an OS error on a file they named
    USAGE = 2            # a bad argument or name, a bad input record, a rubrics file (click uses 2 too)
    MODEL = 3            # no model, not found, cannot load, not a GGUF with weights (doctor too)
    OUTPUT = 4           # the results file cannot be used, or the disk filled mid-run
    CONVERT = 5          # convert/quantize failed, not enough disk for a stage, the plot extra missing
    DOWNLOAD = 6         # the hub unreachable and the file not cached, or no such repo/file/revision
    INTEGRITY = 7        # a sha256 that does not match the hub's or the manifest's
    CLUSTER = 8          # score --ray: no Ray, no cluster, no room, every engine lost, model mismatch
    RESULTS_LOCKED = 9   # another run is writing the same results file
    MEMORY = 10          # doctor: the model does not fit in memory
    REMOTE = 11          # --server: unreachable, key refused, busy past the wait, gone mid-run
    INTERRUPTED = 130    # Ctrl-C (128 + SIGINT, as shells report it)


class PromLocalError(Exception):
    """Base for errors that carry a message meant for the user, not a bug report.

    Each subclass names its exit code from ExitCode."""

    exit_code: int = ExitCode.FAILURE


class UsageError(PromLocalError):
    """A name on the command line that means nothing here: an unknown prompt profile or rubric preset.
    Exit code 2, as click uses for every other bad argument."""

    exit_code = ExitCode.USAGE


class InputError(PromLocalError):
    """A problem with one input record: names the file, the line and the field."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, source: str = "<input>", line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        # Which record the error belongs to, for the error row; the line number when the line has no id.
        self.record_id = str(line) if line is not None else None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class ModelNotFound(PromLocalError):
    exit_code = ExitCode.MODEL


class ModelLoadError(PromLocalError):
    exit_code = ExitCode.MODEL


class ContextOverflow(PromLocalError):
    """A prompt that does not fit the context window; recorded as an error row, never a crash."""

    def __init__(self, n_tokens: int, n_ctx: int, max_new_tokens: int):
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx
        self.max_new_tokens = max_new_tokens
        super().__init__(
            f"prompt is {n_tokens} tokens; with {max_new_tokens} new tokens it needs more than the "
            f"context size {n_ctx} (raise --ctx or lower --max-tokens)"
        )


class OutputError(PromLocalError):
    """The results file cannot be used: not a prom-local results file, a directory, not writable, or
    the disk filled up mid-run (the message then says how many rows are safe)."""

    exit_code = ExitCode.OUTPUT


class ResultsLocked(PromLocalError):
    """Another run is writing the same results file; two writers would interleave their rows."""

    exit_code = ExitCode.RESULTS_LOCKED

    def __init__(self, path: str, pid: int | None):
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"{path}: another prom-local run ({holder}) is writing this results file; "
                         "wait for it to finish, or write the results to another file")


class ConvertError(PromLocalError):
    """Converting or quantizing a checkpoint failed, or its source is unusable (pickled weights
    without --allow-pickle, missing files, the conversion extra not installed)."""

    exit_code = ExitCode.CONVERT


class DiskSpaceError(PromLocalError):
    """Not enough free disk for the next stage; says where, how much is needed and how much is free."""

    exit_code = ExitCode.CONVERT


class DownloadError(PromLocalError):
    """The hub could not be reached (offline mode, no network) and the file is not cached, or the
    repo/file/revision does not exist."""

    exit_code = ExitCode.DOWNLOAD


class IntegrityError(PromLocalError):
    """A file's sha256 does not match what the hub or the manifest says it should be."""

    exit_code = ExitCode.INTEGRITY


class ClusterError(PromLocalError):
    """`score --ray`: Ray missing, no cluster at the address, no room for the engines, every engine lost."""

    exit_code = ExitCode.CLUSTER


class ModelMismatch(ClusterError):
    """The nodes of a cluster would grade with different model files: refused before any work."""
