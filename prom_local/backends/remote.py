"""Grade against a running `prom-local serve` instead of a local model: `score/grade/tui --server URL`.

`RemoteJudge` has the part of `Judge`'s interface that `score_file` and the TUI use (`grade_stream`,
`grade`, `close`), so resume, the one writer, torn-tail repair, error rows and exit codes stay
exactly those of a local run; only the judging happens elsewhere. Each record goes to
POST /v1/grade as the JSON object it was read from (every field, also ones this client does not
know), with this client's sampling options, so the server's rows equal a local `score` of the
same records with the same options. As many records are in flight as the server has parallel
slots, so its scheduler decodes them together.

Failures that end a run (nothing reachable, a refused key, a server busy past the wait, a server
that went away) raise `RemoteError` (exit code 11) after every finished row has been handed over;
a record the server refuses (400, 413, 500) becomes that record's error row, as a bad line does.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import httpx

from ..engine import SamplingParams
from ..errors import ExitCode, InputError, PromLocalError, UsageError
from ..hosts import is_loopback
from ..judging.grades import Grade, error_row, gold_fields
from ..judging.backend import RowStream
from ..judging.records import Record

CONNECT_TIMEOUT = 10.0
# One record's whole answer: a long feedback from a big model on a busy box takes minutes.
READ_TIMEOUT = 900.0
BUSY_WAIT = 300.0      # seconds of 503 answers one record waits through before the run gives up
LOAD_WAIT = 900.0      # seconds to wait for a server that is still loading its model
MAX_RETRY_AFTER = 30.0


class RemoteError(PromLocalError):
    """The server cannot be used: unreachable, a refused key, busy past the wait, gone mid-run, or
    not a prom-local server. Rows written before it stay; re-running resumes."""

    exit_code = ExitCode.REMOTE


def check_url(url: str) -> str:
    """The server's base URL (http(s)://host[:port][/prefix]), without a trailing /v1; a UsageError
    naming --server otherwise."""
    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        port = parts.port   # raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise UsageError(f"--server {url!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {url!r}: expected http://HOST:PORT or https://HOST[:PORT] "
                         "(the URL `prom-local serve` prints)")
    if parts.query or parts.fragment:
        raise UsageError(f"--server {url!r}: no query or fragment expected")
    del port
    return text.removesuffix("/v1")


def plain_http_warning(url: str) -> str | None:
    """A warning when a key would cross the network unencrypted: http:// to a host that is not
    this machine (anyone on the path can read it and use the server)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback(parts.hostname or ""):
        return None
    return (f"warning: sending the API key to {parts.hostname} over plain http (unencrypted); use "
            "https:// (serve --ssl-certfile/--ssl-keyfile, or a TLS reverse proxy)")


@dataclass(frozen=True)
class ServerInfo:
    """What GET /v1/models says about the server's model and engine."""

    url: str
    model: str
    parallel: int
    n_ctx: int | None
    backend: str | None
    path: str | None
    details: dict


def sampling_body(params: SamplingParams) -> dict:
    return dataclasses.asdict(params)


def record_body(record: Record) -> dict:
    """The record as the server reads it: the JSON object it came from, under the id the local row
    is written with (a line without an id is known by its line number)."""
    raw = getattr(record, "raw", None)
    if raw is not None:
        body = dict(raw)
    else:  # built in code, not read from JSON: its fields in the input shape
        body = {"instruction": record.instruction, "response": record.response,
                "rubric": record.rubric.as_dict()}
        if record.reference_answer:
            body["reference_answer"] = record.reference_answer
        if record.gold_score is not None:
            body["gold_score"] = record.gold_score
    body["id"] = record.id
    return body


@dataclass
class ServerGrade(Grade):
    """A row as the server wrote it: written to the results file verbatim (every field, also those
    of record kinds this client's Grade does not model), counted like any Grade."""

    row: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, row: dict) -> "ServerGrade":
        # A row of another kind (a relative verdict) may lack the absolute row's required fields.
        grade = cls.from_row({"score": None, "feedback": "", "output": "", **row})
        grade.row = row
        return grade

    def to_row(self) -> dict:
        return dict(self.row)


class RemoteJudge(RowStream):
    """A judge on a `prom-local serve` at `url`. Connects (and waits for a loading model) at once,
    so an unreachable server or a refused key fails before any work starts."""

    def __init__(self, url: str, *, api_key: str | None = None, sampling: SamplingParams | None = None,
                 concurrency: int | None = None, source: str = "<input>",
                 on_status: Callable[[str], None] | None = None,
                 read_timeout: float = READ_TIMEOUT, busy_wait: float = BUSY_WAIT, load_wait: float = LOAD_WAIT):
        self.url = check_url(url)
        self.sampling = sampling or SamplingParams()
        self.source = source          # the input's name, for error rows
        self.busy_wait = busy_wait
        self._say = on_status or (lambda message: None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._has_key = bool(api_key)
        self._client = httpx.Client(base_url=self.url, headers=headers, trust_env=False,
                                    timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT))
        try:
            self.info = self._connect(load_wait)
        except BaseException:
            self._client.close()
            raise
        # httpx's default pool (100 connections) holds every slot of any server.
        self.concurrency = concurrency or self.info.parallel

    @property
    def model_name(self) -> str:
        return self.info.model

    # -- connecting ------------------------------------------------------------------------------
    def _get(self, path: str) -> httpx.Response:
        try:
            return self._client.get(path)
        except httpx.TimeoutException:
            raise RemoteError(f"the server at {self.url} did not answer GET {path} in time") from None
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach the server at {self.url}: {_reason(exc)}; is "
                              "`prom-local serve` running there?") from None

    def _connect(self, load_wait: float) -> ServerInfo:
        deadline = time.monotonic() + load_wait
        said = False
        while True:
            health = self._get("/health")
            if health.status_code != 503 or time.monotonic() > deadline:
                break
            if not said:
                self._say(f"waiting for the server at {self.url} to load its model")
                said = True
            time.sleep(min(_retry_after(health, 1.0), 5.0))
        if health.status_code == 500:
            raise RemoteError(f"the server at {self.url} could not load its model: "
                              f"{_json(health).get('error', health.text[:200])}")
        if health.status_code == 503:
            raise RemoteError(f"the server at {self.url} was still loading its model after {load_wait:.0f} s")
        models = self._get("/v1/models")
        if models.status_code == 401:
            raise self._refused_key()
        if models.status_code in (403, 421):   # serve's guard: a host name it does not answer to
            raise RemoteError(f"the server at {self.url} refused this client ({models.status_code}): "
                              f"{_message(models)}")
        card = None
        if models.status_code == 200:
            data = _json(models).get("data")
            card = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        details = card.get("prom_local") if card else None
        if not isinstance(details, dict) or not isinstance(details.get("parallel"), int):
            raise RemoteError(f"{self.url} does not look like a prom-local server (GET /v1/models: "
                              f"{models.status_code}); --server needs `prom-local serve`")
        return ServerInfo(url=self.url, model=str(card.get("id")), parallel=max(1, details["parallel"]),
                          n_ctx=details.get("n_ctx"), backend=details.get("backend"),
                          path=details.get("path"), details=details)

    def _refused_key(self) -> RemoteError:
        what = "refused the API key" if self._has_key else "requires an API key"
        hint = ("; PROM_LOCAL_API_KEY is set, but that is the server's variable: a client reads "
                "PROM_LOCAL_SERVER_API_KEY" if not self._has_key and os.environ.get("PROM_LOCAL_API_KEY") else "")
        return RemoteError(f"the server at {self.url} {what} (401): give the key it was started with "
                           f"(--api-key, --api-key-file or PROM_LOCAL_SERVER_API_KEY){hint}")

    # -- grading ---------------------------------------------------------------------------------
    def grade_one(self, record: Record, cancel: threading.Event | None = None, *,
                  both_orders: bool = False) -> Grade:
        """POST one record; its row, or its error row when the server refuses that record."""
        body = {"records": record_body(record), "sampling": sampling_body(self.sampling)}
        if both_orders and len(record.orders()) > 1:   # a pair: it has two orders
            body["both_orders"] = True
        waited = 0.0
        while True:
            try:
                response = self._client.post("/v1/grade", json=body)
            except httpx.TimeoutException:
                raise RemoteError(f"the server at {self.url} gave no answer for line {record.line} "
                                  f"(id {record.id!r}) in {self._client.timeout.read:.0f} s") from None
            except httpx.TransportError as exc:
                raise RemoteError(f"lost the server at {self.url} ({_reason(exc)})") from None
            status = response.status_code
            if status == 200:
                return self._row(record, response)
            if status == 401:
                raise self._refused_key()
            if status == 404:
                raise RemoteError(f"{self.url} has no POST /v1/grade: not a prom-local server, or an older one")
            if status in (502, 504):  # a proxy in front says the server behind it is gone
                raise RemoteError(f"lost the server at {self.url} ({status}: {_message(response)})")
            if status in (503, 429):
                delay = min(_retry_after(response, 1.0), MAX_RETRY_AFTER)
                if waited + delay > self.busy_wait:
                    raise RemoteError(f"the server at {self.url} stayed busy ({status}: {_message(response)}) "
                                      f"for {waited:.0f} s")
                if cancel is not None:
                    if cancel.wait(delay):
                        return _cancelled(record)
                else:
                    time.sleep(delay)
                waited += delay
                continue
            # This record, not the run: 400 (the server reads the record differently), 413 (too
            # big for its --max-body-bytes), 500 (it failed on this one).
            error = InputError(f"the server refused this record ({status}): {_message(response)}",
                               source=self.source, line=record.line,
                               field=_json(response).get("error", {}).get("param") if status == 400 else None)
            return error_row(error, record)

    def _row(self, record: Record, response: httpx.Response) -> Grade:
        row = _json(response)
        if row.get("id") != record.id:
            raise RemoteError(f"the server at {self.url} answered line {record.line} with something "
                              "that is not its row")
        # A benchmark file's record is built here, not read from a JSON line, so its list of gold
        # scores never reached the server: the row gets it here, as a local run writes it.
        if "gold_scores" not in row:
            row.update(gold_fields(getattr(record, "gold_scores", None)))
        # Likewise a KUDGE row's exact human score (kudge_files.py): the client's reader made it.
        for key, value in (getattr(record, "row_fields", None) or {}).items():
            row.setdefault(key, value)
        return ServerGrade.of(row)

    def finished_rows(self, records: Iterable[Record | Grade], *,
                      on_token: Callable[[Record, str], None] | None = None,
                      cancel: threading.Event | None = None,
                      both_orders: bool = False) -> Iterator[tuple[int, Grade]]:
        """(input index, row) for every record, `concurrency` in flight at once, in the order the
        server's answers come back. `on_token` gets each record's whole output once it is back (the
        server does not stream /v1/grade). When the run must stop (RemoteError), every finished row
        is yielded first."""
        results: queue.Queue = queue.Queue()
        items = enumerate(records)
        order: dict[int, Record] = {}
        in_flight = 0
        exhausted = False
        failure: BaseException | None = None

        def work(i: int, record: Record) -> None:
            try:
                results.put((i, self.grade_one(record, cancel, both_orders=both_orders)))
            except BaseException as exc:  # handed to the consuming thread, which raises it
                results.put((i, exc))

        def stopped() -> bool:
            return failure is not None or (cancel is not None and cancel.is_set())

        while True:
            while not exhausted and in_flight < self.concurrency and not stopped():
                try:
                    i, item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                if isinstance(item, Grade):  # a ready-made row (an input error)
                    yield i, item
                    continue
                order[i] = item
                in_flight += 1
                threading.Thread(target=work, args=(i, item), daemon=True, name="prom-local-remote").start()
            if in_flight == 0 or (cancel is not None and cancel.is_set()):
                break
            try:
                i, result = results.get(timeout=0.2 if cancel is not None else None)
            except queue.Empty:
                continue
            in_flight -= 1
            record = order.pop(i)
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            if on_token is not None and result.output:
                on_token(record, result.output)
            yield i, result
        if failure is not None:   # after every row that did finish (resume skips them next time)
            raise failure

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteJudge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cancelled(record: Record) -> Grade:
    return error_row("cancelled", record, finish_reason="cancelled")


def _json(response: httpx.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(response: httpx.Response) -> str:
    error = _json(response).get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", default)))
    except ValueError:
        return default


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        return "connection refused" if "refused" in text.lower() else (text or "cannot connect")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = ["RemoteError", "RemoteJudge", "ServerInfo", "check_url", "record_body"]
