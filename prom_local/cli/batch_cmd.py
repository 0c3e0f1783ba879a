"""`prom-local batch`: hand a file of records to a `prom-local serve` as a durable batch job, then
follow it and fetch the rows (the server keeps grading while this client is gone)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .options import err_console
from .remote_opts import ApiKeyFileOpt, ApiKeyOpt, read_key

batch_app = typer.Typer(help="Durable batch jobs on a `prom-local serve` (OpenAI's Batch API).",
                        no_args_is_help=True)
ServerArg = Annotated[str, typer.Option("--server", metavar="URL", envvar="PROM_LOCAL_SERVER",
                                        help="The `prom-local serve` to use, e.g. http://gpu-box:8000.")]
IdArg = Annotated[str, typer.Argument(metavar="BATCH_ID", help="The batch's id (from `batch submit`).")]


def _client(server: str, api_key: str | None, api_key_file: Path | None):
    from ..backends.batch_client import BatchClient
    from ..backends.remote import plain_http_warning

    key = read_key(api_key, api_key_file)
    warning = plain_http_warning(server) if key else None
    if warning:   # as score/grade --server warn: the key would cross the network in clear
        err_console.print(f"[yellow]{warning}[/yellow]")
    return BatchClient(server, key)


def _summary(batch: dict) -> str:
    counts = batch.get("request_counts") or {}
    paused = (batch.get("prom_local") or {}).get("paused")
    return (f"{batch['id']}  {batch['status']}  {counts.get('completed', 0)} done, {counts.get('failed', 0)} "
            f"failed of {counts.get('total', 0)}" + (f"  (paused: {paused})" if paused else ""))


@batch_app.command("submit")
def submit(input: Annotated[Path, typer.Argument(help="Records as `score` reads them (JSONL).", readable=False)],
           server: ServerArg, api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None) -> None:
    """Upload the records as /v1/grade lines (each record's id is its custom_id) and start a batch.
    Prints the batch id."""
    from ..backends.batch_client import lines_for_records

    lines = list(lines_for_records(input))
    if not lines:
        raise UsageError(f"{input}: no records")
    client = _client(server, api_key, api_key_file)
    batch = client.submit(lines, input.name, metadata={"source": input.name[:500]})
    err_console.print(f"submitted {len(lines)} records: {_summary(batch)}")
    typer.echo(batch["id"])


@batch_app.command("status")
def status(batch_id: IdArg, server: ServerArg, api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the batch object as JSON.")] = False) -> None:
    """The batch's status and counts."""
    batch = _client(server, api_key, api_key_file).get(batch_id)
    typer.echo(json.dumps(batch, ensure_ascii=False) if as_json else _summary(batch))


@batch_app.command("wait")
def wait(batch_id: IdArg, server: ServerArg, api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None,
         interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 5.0,
         timeout: Annotated[Optional[float], typer.Option("--timeout", min=0, help="Give up after this many "
                                                          "seconds (exit 11); default: wait on.")] = None) -> None:
    """Poll until the batch ends (completed, failed, cancelled or expired); print its last status."""
    from ..backends.batch_client import TERMINAL
    from ..backends.remote import RemoteError

    client = _client(server, api_key, api_key_file)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = ""
    while True:
        batch = client.get(batch_id)
        line = _summary(batch)
        if line != shown:
            err_console.print(line)
            shown = line
        if batch["status"] in TERMINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise RemoteError(f"batch {batch_id} still {batch['status']} after {timeout:g} s")
        time.sleep(interval)   # a poll interval: the server is elsewhere
    typer.echo(batch["status"])


@batch_app.command("cancel")
def cancel(batch_id: IdArg, server: ServerArg, api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None) -> None:
    """Cancel the batch: lines in flight stop, finished ones are kept in its results."""
    typer.echo(_summary(_client(server, api_key, api_key_file).cancel(batch_id)))


@batch_app.command("list")
def list_batches(server: ServerArg, api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None,
                 limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many, newest first.")] = 20
                 ) -> None:
    """Your batches on the server, newest first."""
    for batch in _client(server, api_key, api_key_file).list(limit):
        typer.echo(_summary(batch))


@batch_app.command("results")
def results(batch_id: IdArg, server: ServerArg,
            output: Annotated[Path, typer.Option("-o", "--output", help="Rows as `score` writes them (JSONL).")],
            api_key: ApiKeyOpt = None, api_key_file: ApiKeyFileOpt = None) -> None:
    """Write a finished batch's rows exactly as `prom-local score` writes them, in input order (so
    `report` and `compare` read them); a line that failed becomes its record's error row. A cancelled
    batch gives the rows that finished. An existing OUTPUT is resumed, as by `score`."""
    from ..backends.batch_client import rows_from_results
    from ..backends.remote import RemoteError, ServerGrade
    from ..runs.results_sink import ResultsSink

    client = _client(server, api_key, api_key_file)
    batch = client.get(batch_id)
    if batch["status"] not in ("completed", "cancelled"):
        raise RemoteError(f"batch {batch_id} is {batch['status']}: results exist once it is completed or "
                          "cancelled (`prom-local batch wait`)")
    if batch["endpoint"] != "/v1/grade":
        raise UsageError(f"batch {batch_id} ran {batch['endpoint']}, not /v1/grade: download its output file "
                         "with the openai SDK instead")
    rows = rows_from_results(client.content(batch.get("output_file_id")), client.content(batch.get("error_file_id")))
    with ResultsSink(output) as sink:
        for row in rows:
            if str(row.get("id")) not in sink.done_ids:
                sink.write(ServerGrade.of(row))
    err_console.print(f"{len(rows)} rows -> {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")
