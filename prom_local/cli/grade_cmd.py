"""`prom-local grade`: one record from flags or a JSON object on stdin, feedback streamed."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from ..errors import ExitCode, InputError
from ..judging.records import record_from_mapping
from ..judging.rubrics import SCORES, presets
from ..judging.samples import samples_line
from .options import EngineOptions, err_console, with_engine_options
from .remote_opts import ApiKeyFileOpt, ApiKeyOpt, ServerOpt, backend_from_flags, check_remote_options


def _record_data(instruction, response, reference, criteria, descriptions, preset) -> dict:
    if instruction is None and response is None:
        if sys.stdin.isatty():
            raise InputError("give --instruction and --response, or a JSON record on stdin",
                             source="<arguments>")
        text = sys.stdin.read()
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc.msg}", source="<stdin>", line=exc.lineno) from None
    data: dict = {"id": "1", "instruction": instruction, "response": response,
                  "reference_answer": reference}
    if preset:
        table = presets()
        if preset not in table:
            raise InputError(f"unknown rubric preset {preset!r} (known: {', '.join(table)})",
                             source="<arguments>", field="--rubric-preset")
        data["rubric"] = table[preset].as_dict()
    else:
        data["criteria"] = criteria
        for s, text in zip(SCORES, descriptions):
            data[f"score{s}_description"] = text
    return data


def register(app: typer.Typer) -> None:
    @app.command("grade")
    @with_engine_options
    def grade(
        instruction: Annotated[Optional[str], typer.Option("--instruction", "-i")] = None,
        response: Annotated[Optional[str], typer.Option("--response", "-r")] = None,
        reference: Annotated[Optional[str], typer.Option("--reference", help="Reference answer (score 5).")] = None,
        criteria: Annotated[Optional[str], typer.Option("--criteria")] = None,
        score1: Annotated[Optional[str], typer.Option("--score1")] = None,
        score2: Annotated[Optional[str], typer.Option("--score2")] = None,
        score3: Annotated[Optional[str], typer.Option("--score3")] = None,
        score4: Annotated[Optional[str], typer.Option("--score4")] = None,
        score5: Annotated[Optional[str], typer.Option("--score5")] = None,
        rubric_preset: Annotated[Optional[str], typer.Option(
            "--rubric-preset", help="A built-in rubric: " + ", ".join(presets()))] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result row as JSON at the end.")] = False,
        server: ServerOpt = None,
        api_key: ApiKeyOpt = None,
        api_key_file: ApiKeyFileOpt = None,
        *, opts: EngineOptions,
    ) -> None:
        """Grade one record given as flags (or a JSON object on stdin), streaming the feedback
        (with --server, printed once the server's answer is back).

        Exit codes: 0 graded; 2 bad input or option, or the record could not be graded; 3 model
        missing or unloadable; 11 --server unreachable, refused the API key, busy or gone.
        """
        check_remote_options(server, api_key_file, opts)
        data = _record_data(instruction, response, reference, criteria,
                            (score1, score2, score3, score4, score5), rubric_preset)
        source = "<stdin>" if instruction is None and response is None else "<arguments>"
        record = record_from_mapping(data, line=1, source=source)
        if server is None and opts.parallel is None:  # one record: more sequences would only reserve KV cache
            opts.parallel = opts.sampling_params().n   # (one per sample)
        judge = backend_from_flags(opts, server, api_key, api_key_file, source=source)
        with judge:
            result = judge.grade(record, on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
        sys.stdout.write("\n")
        probs = ("  P(1..5) = " + " ".join(f"{p:.2f}" for p in result.probabilities)
                 if result.probabilities else "")
        forced = " (forced: the model wrote no score)" if result.forced else ""
        err_console.print(f"[bold]score {result.score}[/bold]{forced}{probs}")
        if "samples" in result.extra:
            err_console.print(samples_line(result.extra))
        if as_json:
            print(json.dumps(result.to_row(), ensure_ascii=False))
        if result.error:
            raise typer.Exit(ExitCode.USAGE)
