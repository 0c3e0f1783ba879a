"""The batch screen: open a JSONL file, grade it into the same resumable results file as
`prom-local score`, and review the results: table, filters, detail, agreement with gold."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from ...runs.score_file import default_output, duplicate_row_id, score_file
from ...errors import InputError, PromLocalError
from ...runs.results_reader import read_results
from ...judging.records import Record
from ...inputs import read_records
from ...reports.absolute import RowFilter, filter_rows
from ...runs.results_sink import RunStats
from ..messages import (BatchActivity, BatchFinished, BatchOpened, BatchOpenFailed, BatchRow, Progress)
from ..widgets.batch.agreement_pane import AgreementPane
from ..widgets.batch.detail_pane import DetailPane
from ..widgets.batch.filter_bar import FilterBar
from ..widgets.batch.results_table import ResultsTable
from ..widgets.batch.run_bar import RunBar
from ..widgets.model_panel import ModelPanel
from .open_file import OpenFileScreen

log = logging.getLogger(__name__)
# Redrawing the table and the figures for every row would make a fast GPU run stutter.
REFRESH_SECONDS = 0.5


def _progress(stats: RunStats) -> Progress:
    return Progress(done=stats.skipped + stats.graded, graded=stats.graded, skipped=stats.skipped,
                    errors=stats.errors, elapsed=stats.elapsed, tokens_per_second=stats.tokens_per_second,
                    generated_per_second=stats.generated_per_second)


def load_batch(input_path: Path, output_path: Path) -> tuple[list[Record | InputError], list[dict], str | None]:
    """The input's records (or the error for each bad line) and the rows already scored, each id
    once; the note says what the reader had to leave out."""
    items = list(read_records(input_path))   # raises InputError when the file itself is unusable
    notes = []
    rows: list[dict] = []
    if output_path.exists():
        results = read_results(output_path, skip_torn_tail=True)
        rows = results.rows
        if results.repeated:
            notes.append(results.warning())
        if output_path.stat().st_size and not output_path.read_bytes().endswith(b"\n"):
            notes.append("the results file ends in a torn line; the next run cuts it off and redoes that record")
    return items, rows, "\n".join(notes) or None


class BatchScreen(Screen):
    BINDINGS = [
        Binding("ctrl+o", "open", "Open", priority=True),
        Binding("ctrl+r", "run", "Run", priority=True),
        Binding("escape", "stop", "Stop"),
        # The filter bar spells these out, so the footer keeps its room for the rest.
        Binding("d", "toggle_disagree", "Disagreeing only", show=False),
        Binding("e", "toggle_errors", "Errors only", show=False),
        Binding("a", "show_all", "All rows", show=False),
        *[Binding(str(s), f"score_filter({s})", f"Score {s} only", show=False) for s in range(1, 6)],
        Binding("g", "toggle_pane", "Detail/Agreement"),
    ]
    HELP = ("Grade a JSONL file into INPUT.prom.jsonl (resumable: the same file `prom-local score` "
            "writes), then filter the results and read the feedback.")

    def __init__(self) -> None:
        super().__init__()
        self.job = None
        self.input_path: Path | None = None
        self.output_path: Path | None = None
        self.order: list[str] = []                 # row ids in input order
        self.records: dict[str, Record] = {}
        self.rows: dict[str, dict] = {}            # id -> result row (or a placeholder)
        self.row_filter = RowFilter()
        self._dirty_table = False
        self._dirty_figures = False
        self._current: str | None = None
        self._last_progress: Progress | None = None
        self._n_done = 0                           # rows in the results file, of self.order

    def compose(self) -> ComposeResult:
        yield ModelPanel()
        yield RunBar(id="run-bar")
        yield FilterBar(id="filter-bar")
        with Horizontal(id="batch-body"):
            yield ResultsTable(id="results")
            with TabbedContent(id="batch-side", initial="tab-detail"):
                with TabPane("Detail", id="tab-detail"):
                    yield DetailPane(id="detail")
                with TabPane("Agreement", id="tab-agreement"):
                    yield AgreementPane(id="agreement-pane")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(REFRESH_SECONDS, self._flush)
        self._show_filter()
        self.query_one(ResultsTable).focus()
        start = getattr(self.app, "batch_input", None)
        if start is not None:
            self.open_file(Path(start), getattr(self.app, "batch_output", None))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.job is not None
        if action in ("run", "open"):
            return None if self.job is not None else True
        return True

    # -- opening ----------------------------------------------------------------------------------
    def action_open(self) -> None:
        if self.job is not None:
            return

        def chosen(result) -> None:
            if result:
                self.open_file(*result)

        self.app.push_screen(OpenFileScreen(self.input_path, None), chosen)

    def open_file(self, input_path: Path, output_path: Path | None = None) -> None:
        output = Path(output_path) if output_path else Path(default_output(input_path))
        self.query_one(RunBar).set_status(Text("reading…", style="dim"))
        self.run_worker(partial(self._open_in_thread, Path(input_path), output), thread=True,
                        exit_on_error=False, group="open", exclusive=True)

    def _open_in_thread(self, input_path: Path, output_path: Path) -> None:
        try:
            items, rows, note = load_batch(input_path, output_path)
        except PromLocalError as exc:
            self.post_message(BatchOpenFailed(str(exc)))
        except Exception as exc:
            log.exception("opening %s failed", input_path)
            self.post_message(BatchOpenFailed(f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(BatchOpened(input_path, output_path, items, rows, note))

    def on_batch_open_failed(self, message: BatchOpenFailed) -> None:
        self.query_one(RunBar).set_status("")
        self.notify(message.error, title="Cannot open", severity="error", timeout=10)

    def on_batch_opened(self, message: BatchOpened) -> None:
        self.input_path, self.output_path = message.input_path, message.output_path
        self.order, self.records, self.rows = [], {}, {}
        seen: set[str] = set()
        for item in message.items:
            if isinstance(item, InputError):
                key = self._unique(item.record_id or "?", seen)
                self.rows[key] = {"id": key, "score": None, "error": str(item), "pending": True}
            else:
                key = item.id if item.id not in seen else duplicate_row_id(item.id, item.line)
                key = self._unique(key, seen)
                self.records[key] = item
                # Pairwise records carry a gold winner instead of a gold score.
                self.rows[key] = {"id": key, "score": None, "gold_score": getattr(item, "gold_score", None),
                                  "gold_winner": getattr(item, "gold_winner", None), "pending": True}
            seen.add(key)
            self.order.append(key)
        for row in message.rows:
            key = str(row.get("id"))
            if key not in self.rows:
                self.order.append(key)   # a row whose record is no longer in the input
            self.rows[key] = row
        self._n_done = n_done = sum(1 for k in self.order if not self.rows[k].get("pending"))
        bar = self.query_one(RunBar)
        bar.show_files(self.input_path, self.output_path, len(self.order), n_done)
        bar.set_status(Text("ready: ^r runs" if n_done < len(self.order) else "all scored", style="dim"))
        if message.note:
            self.notify(message.note, severity="warning", timeout=8)
        self._rebuild_table()
        self._refresh_figures()
        self.query_one(ResultsTable).focus()

    @staticmethod
    def _unique(key: str, seen: set[str]) -> str:
        base, n = key, 2
        while key in seen:
            key, n = f"{base}#{n}", n + 1
        return key

    # -- running ----------------------------------------------------------------------------------
    def action_run(self) -> None:
        if self.job is not None:
            return
        if self.input_path is None:
            self.action_open()
            return
        job = self.app.start_job("batch", "batch: starting")
        if job is None:
            return
        self.job = job
        self._current = None
        self.refresh_bindings()
        self.query_one(RunBar).set_status(Text("starting…", style="yellow"))
        self.run_worker(partial(self._run_in_thread, self.app.judge, self.input_path, self.output_path, job),
                        thread=True, exit_on_error=False, group="batch", name="batch")

    def _run_in_thread(self, judge, input_path: Path, output_path: Path, job) -> None:
        last = {"id": None, "at": 0.0}

        def on_result(grade, stats: RunStats) -> None:
            self.post_message(BatchRow(job.id, grade.to_row(), _progress(stats)))

        def on_token(record, _text: str) -> None:
            now = time.monotonic()
            if record.id != last["id"] and now - last["at"] > 0.2:
                last["id"], last["at"] = record.id, now
                self.post_message(BatchActivity(job.id, record.id))

        progress, error = None, None
        try:
            stats = score_file(judge, input_path, output_path, on_result=on_result, on_token=on_token,
                               cancel=job.cancel)
            progress = _progress(stats)
        except PromLocalError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("batch run failed")
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.post_message(BatchFinished(job.id, progress, job.cancel.is_set(), error))
            job.done.set()

    def _mine(self, job_id: int) -> bool:
        return self.job is not None and self.job.id == job_id

    def on_batch_activity(self, message: BatchActivity) -> None:
        if self._mine(message.job):
            self._current = message.record_id
            self._show_speed()

    def on_batch_row(self, message: BatchRow) -> None:
        if not self._mine(message.job):
            return
        row = message.row
        key = str(row["id"])
        if key not in self.rows:
            self.order.append(key)
        if self.rows.get(key, {"pending": True}).get("pending"):
            self._n_done += 1
        self.rows[key] = row
        self._last_progress = message.progress
        table = self.query_one(ResultsTable)
        matches, shown = self.row_filter.matches(row), key in table.rows
        if matches and shown:
            table.update_row(row)
        elif matches != shown:
            self._dirty_table = True   # joins or leaves the filtered view: redrawn on the next tick
        self._dirty_figures = True
        self.query_one(RunBar).set_progress(self._n_done, len(self.order))
        self.app.set_activity(self.job, f"batch {self._n_done}/{len(self.order)}")
        self._show_speed()
        if table.current_key() == key:
            self._show_detail(key)

    def _show_speed(self) -> None:
        if self._last_progress is not None:
            self.query_one(RunBar).set_status(RunBar.speed(self._last_progress, self._current))
        elif self._current:
            self.query_one(RunBar).set_status(Text(f"grading #{self._current}…", style="yellow"))

    def on_batch_finished(self, message: BatchFinished) -> None:
        if not self._mine(message.job):
            return
        self.app.end_job(self.job)
        self.job = None
        self._current = None
        self.refresh_bindings()
        self._flush(force=True)
        done = self._n_done
        bar = self.query_one(RunBar)
        if message.error:
            bar.set_status(Text("failed", style="bold red"))
            self.notify(message.error, title="Batch run failed", severity="error", timeout=10)
        elif message.cancelled:
            bar.set_status(Text(f"stopped at {done}/{len(self.order)}: ^r resumes", style="yellow"))
        else:
            p = message.progress
            if p is not None and p.graded == 0:
                bar.set_status(Text(f"nothing to do: all {p.skipped} already in {self.output_path.name}",
                                    style="green"))
                return
            errors = f", {p.errors} error{'s' if p.errors != 1 else ''}" if p and p.errors else ""
            scored = p.graded - p.errors if p else 0
            bar.set_status(Text(f"done: {scored} scored{errors}", style="green"))

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
            self.app.set_activity(self.job, "stopping batch…")
            self.query_one(RunBar).set_status(Text("stopping…", style="yellow"))

    # -- reviewing --------------------------------------------------------------------------------
    def _visible(self) -> list[dict]:
        return filter_rows((self.rows[k] for k in self.order), self.row_filter)

    def _rebuild_table(self) -> None:
        rows = self._visible()
        self.query_one(ResultsTable).show_rows(rows)
        self.query_one(FilterBar).show(self.row_filter, len(rows), len(self.order))
        self._dirty_table = False
        key = self.query_one(ResultsTable).current_key()
        self._show_detail(key)

    def _refresh_figures(self) -> None:
        self.query_one(AgreementPane).show([self.rows[k] for k in self.order])
        self._dirty_figures = False

    def _flush(self, force: bool = False) -> None:
        if self._dirty_table or force:
            self._rebuild_table()
        if self._dirty_figures or force:
            self._refresh_figures()

    def _show_filter(self) -> None:
        self.query_one(FilterBar).show(self.row_filter, len(self._visible()), len(self.order))

    def _set_filter(self, row_filter: RowFilter) -> None:
        self.row_filter = row_filter
        self._rebuild_table()

    def action_show_all(self) -> None:
        self._set_filter(RowFilter())

    def action_score_filter(self, score: int) -> None:
        current = self.row_filter
        self._set_filter(RowFilter(None if current.score == score else score, current.disagree, current.errors))

    def action_toggle_disagree(self) -> None:
        f = self.row_filter
        self._set_filter(RowFilter(f.score, not f.disagree, f.errors))

    def action_toggle_errors(self) -> None:
        f = self.row_filter
        self._set_filter(RowFilter(f.score, f.disagree, not f.errors))

    def action_toggle_pane(self) -> None:
        tabs = self.query_one("#batch-side", TabbedContent)
        tabs.active = "tab-agreement" if tabs.active == "tab-detail" else "tab-detail"

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.row_key.value if event.row_key else None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.query_one("#batch-side", TabbedContent).active = "tab-detail"

    def _show_detail(self, key: str | None) -> None:
        row = self.rows.get(key) if key is not None else None
        self.query_one(DetailPane).show(row, self.records.get(key) if key else None)
