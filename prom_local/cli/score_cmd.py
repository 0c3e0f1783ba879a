"""`prom-local score`: the main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..runs.score_file import default_output, score_file
from ..errors import ExitCode, OutputError
from ..judging.grades import Grade
from ..runs.results_reader import read_results
from ..inputs import read_records
from ..runs.results_sink import RunStats, ResultsSink
from ..store.models import resolve_model
from ..runs.workload import pending_work
from ..backends.remote import RemoteError
from .options import EngineOptions, err_console, with_engine_options
from .remote_opts import ApiKeyFileOpt, ApiKeyOpt, ServerOpt, backend_from_flags, check_remote_options

EXIT_RECORD_ERRORS = ExitCode.USAGE   # the run finished, but some records were bad input


def check_input(path: str) -> None:
    """Fail on an input that cannot be read before loading a model (which takes a while)."""
    if path != "-":
        items = read_records(path)
        next(items, None)   # opens the file: InputError when missing, a folder, not readable
        items.close()


def count_lines(path: str) -> int | None:
    if path == "-":
        return None
    from ..inputs import benchmark_files, kudge_files
    for reader in (kudge_files, benchmark_files):   # CSV rows, JSON array records: not lines
        if reader.detect(path):
            return reader.count_records(path)
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def register(app: typer.Typer) -> None:
    @app.command("score")
    @with_engine_options
    def score(
        input: Annotated[str, typer.Argument(help="JSONL records to grade ('-' for stdin).")],
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Results JSONL; re-running with the same file resumes. "
            "Default: INPUT with .prom.jsonl ('-' for stdout).")] = None,
        summary_json: Annotated[Optional[Path], typer.Option(
            "--summary-json", help="Also write the end-of-run summary as JSON here.")] = None,
        retry_errors: Annotated[bool, typer.Option(
            "--retry-errors", help="Drop error rows from OUTPUT first, so fixed records are graded again.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
        both_orders: Annotated[bool, typer.Option(
            "--both-orders", help="Grade each relative (response_A/response_B) record twice, A/B and "
            "B/A, and report position consistency; a pair whose orders disagree is a tie.")] = False,
        ray: Annotated[Optional[str], typer.Option(
            "--ray", metavar="auto|local|ADDRESS", help="Spread the work over a Ray cluster: auto (the "
            "cluster in RAY_ADDRESS or started here with `ray start`, else a local instance), local, or "
            "a cluster address (HOST:PORT). Needs the ray extra.")] = None,
        actors: Annotated[Optional[int], typer.Option(
            "--actors", min=1, help="With --ray: engines to start (default: one per GPU, or one per "
            "node without GPUs). Each has its own --parallel slots.")] = None,
        server: ServerOpt = None,
        api_key: ApiKeyOpt = None,
        api_key_file: ApiKeyFileOpt = None,
        *, opts: EngineOptions,
    ) -> None:
        """Grade every record of a JSONL file; one output row per record, resumable after a kill.

        Exit codes: 0 all records scored; 2 the results file has error rows (bad input, too long),
        or a bad argument; 3 model missing or unloadable; 4 output file unusable, or the disk filled
        up (re-run to resume); 9 another run is writing OUTPUT; 11 --server unreachable, refused the
        API key, stayed busy or went away mid-run (re-run to resume); 130 interrupted (re-run to resume).
        """
        out = output or default_output(input)
        total = count_lines(input)
        if ray is None and actors is not None:
            raise typer.BadParameter("--actors needs --ray")
        if ray is not None and server is not None:
            raise typer.BadParameter("--ray and --server: give one (where the model runs)")
        check_remote_options(server, api_key_file, opts)
        opts.engine_config()   # a bad --gpu-layers fails here, before any file or model is touched
        progress = Progress(
            TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=err_console, disable=quiet, transient=False)
        task = progress.add_task("score", total=total, speed="", start=False)

        def on_result(grade: Grade, stats: RunStats) -> None:
            progress.update(task, completed=stats.skipped + stats.graded,
                            speed=f"{stats.tokens_per_second:,.0f} tok/s "
                                  f"({stats.generated_per_second:,.1f} gen)")

        try:
            # The lock before anything slow: a second writer of OUT is refused at once.
            with ResultsSink(out, retry_errors=retry_errors) as sink:
                check_input(input)
                stats = _score_records(input, sink, server, api_key, api_key_file, opts, quiet,
                                       progress, task, on_result, both_orders=both_orders, ray=ray,
                                       actors=actors)
        except KeyboardInterrupt:
            # typer would turn this into a silent exit; rows written so far are already durable.
            progress.stop()
            err_console.print(f"interrupted; {out} keeps every row written so far: "
                              "re-run the same command to resume")
            raise typer.Exit(ExitCode.INTERRUPTED) from None

        _finish(out, stats, quiet, summary_json)


def _finish(out: str, stats: RunStats, quiet: bool, summary_json: Path | None) -> None:
    """After the run: what was repaired, the summary of the results file as it now stands, and
    the exit code it earns (2 when it holds error rows)."""
    if stats.retried:
        err_console.print(f"removed {stats.retried} error rows from {out} to grade them again")
    if stats.repaired_bytes:
        err_console.print(f"[yellow]cut a torn last line ({stats.repaired_bytes} bytes) from {out}; "
                          "its record was graded again[/yellow]")
    # Imported here: scipy costs ~0.8 s, which `--help` and the other commands should not pay.
    from ..reports.absolute import summarise
    from ..reports.pairwise import summarise_relative
    from ..reports.views import file_view

    summary, relative = None, None
    if out != "-" and not Path(out).exists():   # nothing to write (an empty input)
        summary = summarise([])
    elif out != "-":
        results = read_results(out)
        if results.repeated:
            err_console.print(f"warning: {results.warning()}", style="yellow", markup=False)
        summary, relative = summarise(results.rows), summarise_relative(results.rows)
    if not quiet:
        err_console.print(f"wrote {stats.graded} rows to {out}"
                          + (f" ({stats.skipped} already there)" if stats.skipped else ""))
        if stats.graded:
            err_console.print(f"throughput  {stats.graded / stats.elapsed * 60:.1f} records/min  "
                              f"{stats.tokens_per_second:,.0f} tok/s  "
                              f"(prompt tokens reused from cache: {stats.reused_prompt_tokens})")
        if summary is not None:
            err_console.print(file_view(summary, relative))
    if summary_json is not None and summary is not None:
        try:
            summary_json.write_text(json.dumps({**summary.as_dict(),
                                                "relative": relative.as_dict() if relative else None}, indent=1))
        except OSError as exc:
            raise OutputError(f"{summary_json}: cannot write the summary ({exc.strerror or exc}); "
                              f"the rows are safe in {out}") from None
    # The exit code describes the results file as it now stands, resumed rows included.
    # (summarise counts absolute rows; pairwise rows are summarise_relative's)
    errors = summary.errors + (relative.errors if relative else 0) if summary is not None else stats.errors
    if errors:
        raise typer.Exit(EXIT_RECORD_ERRORS)


def _score_records(input, sink: ResultsSink, server, api_key, api_key_file, opts: EngineOptions, quiet,
                   progress, task, on_result, *, both_orders: bool = False, ray: str | None = None,
                   actors: int | None = None) -> RunStats:
    """Score on the backend backends/choose.py chooses: --server, --ray, else the model loaded here."""

    def need_tokens() -> int | None:
        # KV memory sized to the records this run will grade (prompts tokenized with the
        # vocabulary only), so --parallel auto and --gpu-layers auto choose from the real need.
        resolved = resolve_model(opts.model, opts.models_dir)
        work = pending_work(input, str(sink.path or "-"), resolved.path, opts.profile or resolved.profile,
                            opts.max_tokens)
        return work.need_tokens if work else None

    judge = backend_from_flags(opts, server, api_key, api_key_file, quiet=quiet, need_tokens=need_tokens,
                         source="<stdin>" if input == "-" else str(input), ray=ray, actors=actors,
                         both_orders=both_orders)
    with judge, progress:
        progress.start_task(task)
        try:
            stats = score_file(judge, input, sink, on_result=on_result, both_orders=both_orders)
        except RemoteError as exc:
            raise RemoteError(f"{exc}; {sink.name} keeps the {sink.stats.graded} rows written in this run: "
                              "re-run the same command to resume") from None
        progress.update(task, completed=stats.skipped + stats.graded)
    return stats
