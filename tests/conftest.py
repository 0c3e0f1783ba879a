"""Fixtures for every test, and the isolation that makes the suite behave the same on any machine.

Nothing a test runs may read state from outside the repo and the test's own temporary folders: no
user config or data dir (platformdirs), no model store of the person running the tests (./models of
the checkout, $PROM_LOCAL_MODELS), no PROM_LOCAL_* / RAY_ADDRESS / TEXTUAL_* setting of their shell,
no Hugging Face cache or network. `_isolated_machine` (session) points HOME and the XDG dirs at an
empty folder and clears those variables; `user_state` (every test) gives each test its own
empty model store and rubric folder, so one test's saved rubric is never another's starting state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from assets import llama3_tokenizer_dir, smollm2_gguf
from helpers import TESTS

# tiny_llama3_checkpoint / tiny_llama3_store: a tiny random Llama 3 and its real conversion.
pytest_plugins = ["tiny_llama"]


@pytest.hookimpl(optionalhook=True)   # xdist's hook: absent under -p no:xdist
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may run on (xdist's own count asks psutil for
    physical cores, or ignores the affinity mask), at most 8: the longest module (Ray, ~80 s)
    bounds the run long before more would help, and each worker holds its own models."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def pytest_configure(config):
    """Under xdist, each worker keeps to one CPU of its own, and so does everything it starts (the
    CLI and server subprocesses inherit the mask). The engine sizes llama.cpp's thread pool from
    the affinity mask, so each worker's inference runs on one thread: two workers with a pool of
    two spinning threads each on two cores run several times slower than one thread each."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")   # "gw0", "gw1", ...
    if worker and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


# The modules that take longest (measured: Ray, parallel decoding, drafts, the batch server, ...),
# handed to xdist's workers first so that the run does not end on one worker finishing a long
# module while the other sits idle. Only the order changes; a module not named here runs after
# these, in file order.
LONGEST_FIRST = ("test_ray", "test_parallel", "test_drafts", "test_serve_batches", "test_convert", "test_serve",
                 "test_remote", "test_serve_soak", "test_serve_hostile", "test_hub", "test_tui_grade",
                 "test_imatrix", "test_kudge", "test_cli_score", "test_bench", "test_tui_batch")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))   # stable: file order within


# Settings of the person running the tests that would change what the code under test does.
_CLEARED_PREFIXES = ("PROM_LOCAL_", "TEXTUAL_")
_KEPT = {"PROM_LOCAL_UPDATE_SNAPSHOTS"}   # a test option, not application state (tui_support.py)
_CLEARED = {"RAY_ADDRESS", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"}


@pytest.fixture(scope="session", autouse=True)
def _isolated_machine(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if (name.startswith(_CLEARED_PREFIXES) and name not in _KEPT) or name in _CLEARED:
                mp.delenv(name)
        mp.setenv("HOME", str(home))
        for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                         ("XDG_CACHE_HOME", ".cache"), ("XDG_STATE_HOME", ".local/state")):
            mp.setenv(var, str(home / sub))
        mp.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield home


@pytest.fixture(autouse=True)
def user_state(tmp_path_factory, monkeypatch):
    state = tmp_path_factory.mktemp("user-state")
    monkeypatch.setenv("PROM_LOCAL_MODELS", str(state / "models"))      # an empty model store
    monkeypatch.setenv("PROM_LOCAL_CONFIG_DIR", str(state / "config"))  # no saved rubrics
    return state


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_gguf()


# The session's one shared SmolLM2 engine, once made (see smollm2_engine).
_SHARED_ENGINES: list = []


@pytest.fixture(scope="session")
def smollm2_engine(smollm2):
    """One real SmolLM2 engine (CPU, n_ctx 1024, one thread, default --parallel) for every test
    that only reads it: judges of any profile and sampling go on it with helpers.judge_on, and
    none of them closes it. Its prefix cache carries over between tests, which the engine makes
    harmless (a reused prefix gives the cold run's numbers bit for bit, tests/test_parallel.py);
    a test that needs a cold cache, other engine settings or to close it makes its own."""
    from prom_local.engine import Engine, EngineConfig
    # One thread, as test_parallel.py and test_drafts.py: the suite shares its cores, and
    # llama.cpp's spinning thread pool slows down badly when its threads do not each get one.
    with Engine(smollm2, EngineConfig(n_ctx=1024, gpu_layers=0, n_threads=1)) as engine:
        _SHARED_ENGINES.append(engine)
        yield engine
        _SHARED_ENGINES.remove(engine)


@pytest.fixture(autouse=True)
def _shared_engine_left_idle():
    """Order independence: no test may leave a request queued or running on the shared engine."""
    yield
    for engine in _SHARED_ENGINES:
        assert engine.scheduler.idle(), "a test left requests on the shared SmolLM2 engine"


@pytest.fixture(scope="session")
def llama3_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(llama3_tokenizer_dir()))


@pytest.fixture(scope="session")
def tiny_llama3_gguf(tiny_llama3_store):
    """The converted tiny Llama 3 (Q8_0), vocabulary only: llama.cpp's Llama 3 tokenizer and template."""
    from prom_local.engine import load_vocab_only
    from prom_local.judging.prompts import get_profile
    store, name = tiny_llama3_store
    model = load_vocab_only(store / name / f"{name}.Q8_0.gguf")
    assert model.chat_template, "the converted GGUF should carry the Llama 3 chat template"
    yield model, get_profile("prometheus-ko")
    model.close()


@pytest.fixture(scope="session")
def card_sample() -> dict:
    return json.loads((TESTS / "data" / "sample-ko.json").read_text("utf-8"))
