"""`prom-local pull`: a ready GGUF from the hub into the model store, sha256-verified."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..units import format_bytes
from .convert_cmd import RichReporter, interrupt_means_resume, stage_table
from .options import StoreOutOpt, err_console


def register(app: typer.Typer) -> None:
    @app.command("pull")
    def pull(
        target: Annotated[str, typer.Argument(
            help="A registry name with a quant (prometheus-ko:Q4_K_M), a hub repo id followed by FILE, "
            "or kudge (the KUDGE benchmark CSVs).")],
        file: Annotated[Optional[str], typer.Argument(
            help="The .gguf file in the repo (with REPO); with kudge, which CSVs.")] = None,
        source: Annotated[Optional[str], typer.Option(
            "--from", help="Which of the registry's gguf_sources to use (default: the first); "
            "with kudge, a mirror's base URL.")] = None,
        quant: Annotated[Optional[str], typer.Option(
            "--quant", help="Quant label in the store (default: from the file name or the GGUF).")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Store name.")] = None,
        revision: Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit.")] = None,
        out: StoreOutOpt = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a file of the same name:quant.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the manifest entry as JSON.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    ) -> None:
        """Download a published GGUF (through the Hugging Face cache; HF_HUB_OFFLINE=1 uses only the
        cache), check its sha256 against the hub's, and add it to the store with a manifest entry.

        `pull kudge [FILES]`: the KUDGE benchmark's CSVs (FILES: comma-separated, from pointwise,
        pointwise-falseinfo, pairwise, pairwise-falseinfo, challenge, or all; default
        pointwise,pointwise-falseinfo) from github.com/guijinSON/kudge at a pinned commit into
        prom-local's cache, each checked against its git blob id; --from takes a mirror's base URL."""
        if target == "kudge":
            if revision or quant or name or out:
                raise typer.BadParameter("pull kudge takes FILES, --from, --force, --json and --quiet only "
                                         "(the commit is pinned: the files are checked against it)")
            _pull_kudge(file, source, force, as_json, quiet)
            return
        from ..store.pull import pull_gguf

        with interrupt_means_resume(), RichReporter(quiet) as reporter:
            report = pull_gguf(target, file, revision=revision, quant=quant, name=name, source_key=source,
                               store=out, force=force, reporter=reporter)
        if as_json:
            print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False))
        if quiet:
            return
        err_console.print(stage_table(report.stages))
        entry = report.entry
        check = (f"matches the hub's sha256 ({entry['verified_against']})" if entry.get("verified_against")
                 else "not checked: no sha256 known for it")
        err_console.print(f"{report.name}:{report.quant}  {format_bytes(entry['size'])}  sha256 "
                          f"{entry['sha256'][:16]}… {check}\nmanifest: {report.manifest_path}\n"
                          f"use it: prom-local score INPUT.jsonl --model {report.name}:{report.quant}"
                          + (f" --models-dir {out}" if out else ""))


def _pull_kudge(files: Optional[str], base: Optional[str], force: bool, as_json: bool, quiet: bool) -> None:
    from ..store.kudge_pull import pull_kudge

    names = [n.strip() for n in files.split(",") if n.strip()] if files else []
    pulled = pull_kudge(names, base=base, force=force)
    if as_json:
        print(json.dumps([p.as_dict() for p in pulled], indent=1, ensure_ascii=False))
    if not quiet:
        for p in pulled:
            err_console.print(f"{p.name}: {p.path} ({p.how}, git blob {p.blob[:12]} matches)", markup=False)
        err_console.print(f"use it: prom-local score {pulled[0].path}" if pulled else "", markup=False)
