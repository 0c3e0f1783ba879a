"""The engine options are declared once (cli/options.py's Flag table): their defaults are the library's,
they reach EngineConfig and SamplingParams, and every command's --help lists every option it takes.
In-process and model-free: nothing here loads llama.cpp weights."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from prom_local.cli import app
from prom_local.cli.options import ENGINE_FLAGS, FLAGS, EngineOptions
from prom_local.engine import EngineConfig, SamplingParams

# Where the CLI's default differs from the library's on purpose (said why at the Flag).
CLI_OWN_DEFAULTS = {"parallel": None}


def field_default(cls: type, name: str):
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


@pytest.mark.parametrize("flag", [f for f in ENGINE_FLAGS if f.into], ids=lambda f: f.name)
def test_defaults_are_the_library_dataclasses(flag):
    cls, name = flag.into
    assert name in {f.name for f in dataclasses.fields(cls)}
    expected = CLI_OWN_DEFAULTS.get(flag.name, field_default(cls, name))
    assert flag.cli_default == expected
    assert getattr(EngineOptions(), flag.name) == expected


def test_every_sampling_field_has_a_flag():
    covered = {f.into[1] for f in ENGINE_FLAGS if f.into and f.into[0] is SamplingParams}
    assert covered == {f.name for f in dataclasses.fields(SamplingParams)}


def test_options_reach_the_engine_config_and_sampling_params():
    opts = EngineOptions(ctx=1024, gpu_layers="all", threads=3, parallel=2, verbose=True, seed=7,
                         temperature=0.5, top_p=0.9, top_k=40, repeat_penalty=1.1, max_tokens=64)
    assert opts.engine_config() == EngineConfig(n_ctx=1024, gpu_layers=-1, n_threads=3, n_parallel=2,
                                                verbose=True)
    assert opts.sampling_params() == SamplingParams(temperature=0.5, top_p=0.9, top_k=40,
                                                    repeat_penalty=1.1, seed=7, max_tokens=64)
    # Nothing given: the library's own objects, but for the CLI's automatic --parallel.
    assert EngineOptions().engine_config() == EngineConfig(n_parallel=None)
    assert EngineOptions().sampling_params() == SamplingParams()


def test_a_bad_value_names_its_flag():
    with pytest.raises(typer.BadParameter) as info:
        EngineOptions(gpu_layers="lots").engine_config()
    assert info.value.param_hint == "--gpu-layers"
    result = CliRunner().invoke(app, ["tui", "--gpu-layers", "lots"])
    assert result.exit_code == 2
    assert "--gpu-layers" in result.output and "lots" in result.output


def _commands() -> dict:
    """Every command that runs, by its words: a group's (`batch`) as "batch submit" etc."""
    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for sub, leaf in getattr(command, "commands", {}).items():
            commands[f"{name} {sub}"] = leaf
        if not hasattr(command, "commands"):
            commands[name] = command
    return commands


def test_the_engine_commands_take_every_engine_option():
    commands = _commands()
    for name in ("score", "grade", "tui"):
        names = {p.name for p in commands[name].params}
        assert set(FLAGS) <= names, name


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_lists_every_option(name):
    command = _commands()[name]
    result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "220"}, terminal_width=220)
    assert result.exit_code == 0, result.output
    # (typer vendors its own click: tell options from arguments by what they say they are)
    options = [p for p in command.params if p.param_type_name == "option"]
    assert options
    for option in options:
        for spelling in option.opts:  # whole words: --model is not shown by --models-dir
            assert re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", result.output), \
                f"{name} --help does not show {spelling}"


def test_the_store_option_is_one_declaration():
    """Every command with a model store option spells and explains it the same way."""
    helps = {}
    for name, command in _commands().items():
        for param in command.params:
            if "--models-dir" in getattr(param, "opts", ()):
                helps[name] = param.help
    assert {"score", "grade", "tui", "render", "models", "info", "convert", "pull"} <= set(helps)
    assert set(helps.values()) == {FLAGS["models_dir"].help}


# ----------------------------------------------------------------------------------------------
# --samples and --protocol: the protocol fills what was not given explicitly.

def _probe_app(seen: list):
    from prom_local.cli.options import with_engine_options
    probe = typer.Typer()

    @probe.command()
    @with_engine_options
    def run(*, opts: EngineOptions) -> None:
        seen.append((opts.sampling_params(), opts.engine_config()))

    return probe


def test_protocol_paper_sets_the_papers_sampling():
    seen: list = []
    result = CliRunner().invoke(_probe_app(seen), ["--protocol", "paper"])
    assert result.exit_code == 0, result.output
    sampling, engine = seen[0]
    assert sampling == SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, n=3)
    assert engine.min_parallel == 3     # one sequence per sample


def test_explicit_flags_override_the_protocol_even_at_their_default_value():
    seen: list = []
    result = CliRunner().invoke(_probe_app(seen), ["--protocol", "paper", "--samples", "5",
                                                   "--temperature", "0.0", "--seed", "9"])
    assert result.exit_code == 0, result.output
    sampling, engine = seen[0]
    # --temperature 0.0 equals the default, and still wins: it was given.
    assert sampling == SamplingParams(temperature=0.0, top_p=0.9, repeat_penalty=1.03, n=5, seed=9)
    assert engine.min_parallel == 5


def test_samples_without_a_protocol_and_an_unknown_protocol():
    seen: list = []
    assert CliRunner().invoke(_probe_app(seen), ["--samples", "2"]).exit_code == 0
    assert seen[0][0] == SamplingParams(n=2)
    result = CliRunner().invoke(_probe_app(seen), ["--protocol", "papers"])
    assert result.exit_code == 2 and "--protocol" in result.output and "paper" in result.output
    assert CliRunner().invoke(_probe_app(seen), ["--samples", "0"]).exit_code == 2
