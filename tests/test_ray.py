"""`score --ray` on real Ray: a local instance started by `--ray auto`, and a two-node cluster started
on this machine with `ray start` (head and worker as separate nodes, each with its own resources and
its own model store). Real engines on the SmolLM2 GGUF, real kills: `ray.kill` of an actor, SIGKILL of
the driver.
"""

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT, run_cli, short_record, write_jsonl

from prom_local.backends.ray.cluster import group_chunks
from prom_local.backends.ray.cluster import plan_actors
from prom_local.judging.records import Record
from prom_local.judging.rubrics import Rubric

# Ray runs only in subprocesses (CLI runs, tests/ray_kill_driver.py, `ray start`): Ray reads its
# auth settings once per process, at import, so the test process itself stays free of it.
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the ray extra is not installed: pip install -e '.[ray]'")

# One thread per engine: the runs compare exactly with a local run of the same thread count, and
# the tests stay polite on a shared 2-core machine.
FAST = ["--max-tokens", "6", "--ctx", "1024", "--gpu-layers", "0", "--threads", "1"]
RAY_BIN = str(Path(sys.executable).with_name("ray"))
# Fields that must be identical to a local run. The CLI runs (same --parallel, auto, and thread
# count) also compare probabilities to 1e-6: the engine keeps results independent of which records
# share a decode step. The lost-actor run (tests/ray_kill_driver.py, --parallel 2 while a node dies)
# allows 0.1 on probabilities: what it must show is every record written once with the same text.
EXACT = ("id", "score", "output", "feedback", "forced", "finish_reason", "prompt_tokens",
         "completion_tokens", "error")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _assert_same_rows(got: list[dict], want: list[dict], tol: float) -> None:
    by_id = {r["id"]: r for r in got}
    assert len(by_id) == len(got), "an id was written twice"
    assert sorted(by_id) == sorted(r["id"] for r in want)
    for ref in want:
        row = by_id[ref["id"]]
        assert {k: row[k] for k in EXACT} == {k: ref[k] for k in EXACT}
        for s in "12345":
            assert row["probabilities"][s] == pytest.approx(ref["probabilities"][s], abs=tol)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    env: dict            # what a driver needs to join (token auth)
    stores: dict         # node name -> its model store


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """Token auth with a token of our own, so tests neither need nor touch ~/.ray/auth_token."""
    token = tmp_path_factory.mktemp("ray-auth") / "token"
    token.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, smollm2, ray_env):
    """Head `node-a` and worker `node-b` on 127.0.0.1, one CPU each, each with its own store:
    `tiny` is the same file on both, `odd` differs between them, `only-a` exists only on node-a,
    `stale` does not match its manifest's sha256."""
    base = tmp_path_factory.mktemp("stores")
    stores = {"node-a": base / "a", "node-b": base / "b"}
    for node, store in stores.items():
        for name in ("tiny", "odd") + (("only-a",) if node == "node-a" else ()):
            (store / name).mkdir(parents=True)
            shutil.copyfile(smollm2, store / name / f"{name}.Q4_1.gguf")
    with (stores["node-b"] / "odd" / "odd.Q4_1.gguf").open("ab") as handle:
        handle.write(b"\0" * 64)  # another file under the same name
    # `stale`: the same file on both nodes, but not the one its manifest recorded.
    for store in stores.values():
        (store / "stale").mkdir()
        shutil.copyfile(smollm2, store / "stale" / "stale.Q4_1.gguf")
        (store / "stale" / "manifest.json").write_text(json.dumps(
            {"name": "stale", "files": {"Q4_1": {"file": "stale.Q4_1.gguf", "sha256": "0" * 64}}}))
    # Short: Ray puts unix sockets under it, and their paths have a length limit.
    temp_dir = tempfile.mkdtemp(prefix="plr", dir="/tmp")
    port = _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "80000000",
              "--disable-usage-stats"]
    env = {**os.environ, **ray_env}
    try:
        subprocess.run([RAY_BIN, "start", "--head", "--port", str(port), "--temp-dir", temp_dir,
                        "--include-dashboard", "false", "--node-name", "node-a",
                        "--resources", '{"node_a": 1}', *common],
                       env={**env, "PROM_LOCAL_MODELS": str(stores["node-a"])}, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([RAY_BIN, "start", "--address", f"127.0.0.1:{port}", "--node-name", "node-b",
                        "--resources", '{"node_b": 1}', *common],
                       env={**env, "PROM_LOCAL_MODELS": str(stores["node-b"])}, check=True,
                       capture_output=True, timeout=120)
        yield Cluster(f"127.0.0.1:{port}", ray_env, stores)
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(temp_dir: str) -> None:
    """Stop this test's Ray nodes and nothing else: `ray stop` would stop every Ray instance on the
    machine, other people's included. Ours are the processes whose command line names our temp dir,
    and their children (the agents and workers of our raylets)."""
    procs = Path("/proc")

    def cmdline(pid: str) -> str:
        try:
            return (procs / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def parent(pid: str) -> str:
        try:
            return (procs / pid / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return ""

    pids = [p.name for p in procs.iterdir() if p.name.isdigit()]
    ours = {pid for pid in pids if temp_dir in cmdline(pid)}
    grew = True
    while grew:  # and their descendants
        more = {pid for pid in pids if parent(pid) in ours} - ours
        ours |= more
        grew = bool(more)
    # A short grace after SIGTERM: the raylets and workers go at once, but gcs_server and the
    # autoscaler monitor outlived 15 s of it here (every run paid the whole wait).
    for sig, grace in ((signal.SIGTERM, 2), (signal.SIGKILL, 15)):
        for pid in ours:
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any((procs / pid).exists() and cmdline(pid) for pid in ours):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("input") / "in.jsonl", [short_record(i) for i in range(3)])


@pytest.fixture(scope="module")
def local_rows(records_file, smollm2, tmp_path_factory):
    """The same records graded by a plain local run: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local") / "out.jsonl"
    result = run_cli("score", str(records_file), "-o", str(out), "--model", str(smollm2), *FAST, "--quiet")
    assert result.returncode == 0, result.stderr
    return _rows(out)


def _ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_ray_auto_starts_a_local_instance_and_matches_a_local_run(tmp_path, records_file, local_rows,
                                                                  smollm2, ray_env):
    before = _ray_processes()
    out = tmp_path / "out.jsonl"
    # auto, with no RAY_ADDRESS and no cluster started here with `ray start` in the default temp
    # dir: a private local instance for this run, gone when it ends.
    env = {k: v for k, v in ray_env.items()}
    result = run_cli("score", str(records_file), "-o", str(out), "--model", str(smollm2), *FAST,
                     "--ray", "auto", env={**env, "RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stderr
    assert "1 engine(s) loaded" in result.stderr and "Traceback" not in result.stderr
    _assert_same_rows(_rows(out), local_rows, tol=1e-6)
    deadline = time.time() + 30
    while _ray_processes() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "the local Ray instance outlived the run"


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_two_nodes_resolve_from_their_own_stores_and_a_lost_actor_is_requeued(tmp_path, cluster,
                                                                                records_file, local_rows):
    out = tmp_path / "out.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_kill_driver.py"), cluster.address,
                             "tiny:Q4_1", str(records_file), str(out)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **cluster.env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["nodes"] == ["node-a", "node-b"]
    # Each node found `tiny:Q4_1` in its own store, and runs this checkout's code.
    assert report["paths"] == sorted(str(cluster.stores[n] / "tiny" / "tiny.Q4_1.gguf")
                                     for n in ("node-a", "node-b"))
    # (from this checkout, or from the copy Ray shipped of it; never some other installed version)
    assert all(Path(code).resolve().is_relative_to(ROOT.resolve()) or "runtime_resources" in code
               for code in report["code"]), report["code"]
    killed = report["killed"]
    assert killed["held"] >= 1 and killed["lost"], "the kill should land while the actor holds records"
    assert report["requeued"] == killed["held"]
    assert sum(report["graded"].values()) == 3
    # Every record exactly once, with the same grades (this run decodes two sequences at a time).
    _assert_same_rows(_rows(out), local_rows, tol=0.1)


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_driver_sigkill_then_rerun_resumes_without_duplicates(tmp_path, cluster, records_file, local_rows,
                                                              smollm2):
    out = tmp_path / "out.jsonl"
    args = ["score", str(records_file), "-o", str(out), "--model", str(smollm2), *FAST,
            "--ray", cluster.address]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **cluster.env}
    proc = subprocess.Popen([sys.executable, "-m", "prom_local", *args, "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 1):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_rows(out))
    assert 1 <= done_before < 3, "the kill should land mid-run"
    with out.open("ab") as handle:  # a torn write on top, as a kill inside write() leaves
        handle.write(b'{"id": "r2", "score": ')
    # The killed driver's actors go with its job; the re-run gets the cluster's CPUs back.
    result = run_cli(*args, env=cluster.env)
    assert result.returncode == 0, result.stderr
    assert "torn last line" in result.stderr and f"({done_before} already there)" in result.stderr
    assert "node node-a" in result.stderr and "node node-b" in result.stderr
    _assert_same_rows(_rows(out), local_rows, tol=1e-6)


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_nodes_with_different_or_missing_model_files_are_refused_before_any_work(tmp_path, cluster,
                                                                                records_file):
    out = tmp_path / "out.jsonl"
    result = run_cli("score", str(records_file), "-o", str(out), "--model", "odd:Q4_1", *FAST,
                     "--ray", cluster.address, env=cluster.env)
    assert result.returncode == 8, result.stderr
    assert "the nodes hold different model files for --model odd:Q4_1" in result.stderr
    for node, store in cluster.stores.items():
        assert f"node {node}" in result.stderr and str(store / "odd" / "odd.Q4_1.gguf") in result.stderr
    assert "Nothing was graded" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not out.read_text()

    missing = run_cli("score", str(records_file), "-o", str(out), "--model", "only-a:Q4_1", *FAST,
                      "--ray", cluster.address, env=cluster.env)
    assert missing.returncode == 3, missing.stderr
    assert "on node node-b" in missing.stderr and "node node-a" not in missing.stderr.split("error:")[1]
    assert f"only-a:Q4_1 is not in this node's model store ({cluster.stores['node-b']})" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not out.exists() or not out.read_text()

    stale = run_cli("score", str(records_file), "-o", str(out), "--model", "stale:Q4_1", *FAST,
                    "--ray", cluster.address, env=cluster.env)
    assert stale.returncode == 7, stale.stderr   # IntegrityError, as `pull` reports it
    assert f"but its manifest says {'0' * 64}: the file is damaged or was replaced" in stale.stderr
    assert not out.exists() or not out.read_text()


def _flat(value, path=""):
    """A row as {path: leaf}, without timings and prefix-reuse counts (what a run happened to have
    cached differs between one engine and two)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() if "seconds" not in key and "reused" not in key
                for k, v in _flat(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}[{i}]").items()}
    return {path: value}


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_pairs_in_both_orders_match_a_local_run_and_an_absolute_only_profile_is_refused(tmp_path, cluster,
                                                                                        smollm2):
    pairs = [{"id": f"p{i}", "instruction": f"What is {i} + {i}?", "response_A": f"{2 * i}.",
              "response_B": f"{2 * i + 1}.", "rubric": "Is the answer correct?", "gold_winner": "A"}
             for i in range(2)]
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    args = ["--model", str(smollm2), "--profile", "prometheus-2", "--both-orders", *FAST, "--quiet"]
    local = run_cli("score", src, "-o", tmp_path / "local.jsonl", *args)
    assert local.returncode == 0, local.stderr
    on_ray = run_cli("score", src, "-o", tmp_path / "ray.jsonl", *args, "--ray", cluster.address, env=cluster.env)
    assert on_ray.returncode == 0, on_ray.stderr
    want = {row["id"]: _flat(row) for row in _rows(tmp_path / "local.jsonl")}
    got = {row["id"]: _flat(row) for row in _rows(tmp_path / "ray.jsonl")}
    assert sorted(got) == sorted(want) == ["p0", "p1"]
    for rid, row in want.items():
        assert got[rid].keys() == row.keys() and ".orders[1].order" in row   # both orders graded
        for key, value in row.items():
            if isinstance(value, float):   # probabilities: the same arithmetic, rows round to 6 places
                assert got[rid][key] == pytest.approx(value, abs=1e-6), key
            else:
                assert got[rid][key] == value, key

    # Pairs on a profile without a pairwise prompt: the driver stops, as a local run does.
    refused = run_cli("score", src, "-o", tmp_path / "ko.jsonl", "--model", str(smollm2), *FAST,
                      "--ray", cluster.address, env=cluster.env)
    assert refused.returncode == 2, refused.stderr
    assert "prompt profile 'prometheus-ko' has no relative (pairwise) prompt" in refused.stderr
    assert "Traceback" not in refused.stderr and "lost the engine" not in refused.stderr


def test_without_ray_flag_ray_is_never_imported_and_without_ray_installed_the_error_is_clear(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1)])
    probe = ("import sys\n"
             "{block}"
             "from prom_local.cli import main\n"
             "sys.argv = ['prom-local', 'score', {src!r}, '--model', {model!r}{extra}]\n"
             "try:\n    main()\n"
             "except SystemExit as exc:\n    print('exit', exc.code, 'ray' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run([sys.executable, "-c", probe.format(block="", src=str(src), extra="",
                                                               model=str(tmp_path / "none.gguf"))],
                           capture_output=True, text=True, env=env, timeout=60)
    assert plain.stdout.split() == ["exit", "3", "False"], plain.stderr
    # A Python where `import ray` fails, as it does without the extra:
    blocked = subprocess.run([sys.executable, "-c", probe.format(
        block="sys.modules['ray'] = None\n", src=str(src), extra=", '--ray', 'auto'",
        model=str(tmp_path / "none.gguf"))], capture_output=True, text=True, env=env, timeout=60)
    assert blocked.stdout.split()[:2] == ["exit", "8"], blocked.stderr
    assert "pip install 'prom-local[ray]'" in blocked.stderr and "Traceback" not in blocked.stderr
    no_ray = run_cli("score", str(src), "--actors", "2", "--model", str(tmp_path / "none.gguf"))
    assert no_ray.returncode == 2 and "--actors needs --ray" in no_ray.stderr


def _record(i: int, instruction: str) -> Record:
    return Record(id=f"r{i}", instruction=instruction, response="x",
                  rubric=Rubric.from_mapping({"criteria": "c", **{f"score{s}_description": str(s)
                                                                   for s in range(1, 6)}}))


def test_chunks_keep_records_that_share_an_instruction_together():
    records = [_record(i, "AB"[i % 2]) for i in range(6)] + [_record(6 + i, f"q{i}") for i in range(3)]
    chunks = [[r.id for r in c] for c in group_chunks(records, 3)]
    assert chunks == [["r0", "r2", "r4"], ["r1", "r3", "r5"], ["r6", "r7", "r8"]]
    big = [[r.id for r in c] for c in group_chunks([_record(i, "same") for i in range(5)], 2)]
    assert big == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    # A small group does not split a bigger one across chunks when the chunk is already half full.
    mixed = [_record(0, "a"), _record(1, "a"), _record(2, "b"), _record(3, "b"), _record(4, "b")]
    assert [[r.id for r in c] for c in group_chunks(mixed, 4)] == [["r0", "r1"], ["r2", "r3", "r4"]]


def test_engines_are_placed_one_per_gpu_else_one_per_node_sharing_its_cpus():
    gpu_nodes = [{"NodeID": "a" * 56, "NodeName": "gpu-1", "Alive": True, "Resources": {"CPU": 16, "GPU": 2}},
                 {"NodeID": "b" * 56, "NodeName": "gpu-2", "Alive": True, "Resources": {"CPU": 16, "GPU": 1}},
                 {"NodeID": "c" * 56, "NodeName": "head", "Alive": True, "Resources": {"CPU": 4}},
                 {"NodeID": "d" * 56, "NodeName": "dead", "Alive": False, "Resources": {"CPU": 8, "GPU": 8}}]
    slots = plan_actors(gpu_nodes, None, use_gpus=True)
    assert sorted(s.node_name for s in slots) == ["gpu-1", "gpu-1", "gpu-2"]
    assert all(s.num_gpus == 1 for s in slots)
    with pytest.raises(Exception, match="only 3 GPUs"):
        plan_actors(gpu_nodes, 4, use_gpus=True)
    cpu = plan_actors(gpu_nodes, None, use_gpus=False)
    assert sorted(s.node_name for s in cpu) == ["gpu-1", "gpu-2", "head"]
    three = plan_actors(gpu_nodes[2:3], 3, use_gpus=False)
    assert [s.num_cpus for s in three] == [1.33] * 3 and [s.threads for s in three] == [1] * 3
    assert plan_actors(gpu_nodes[2:3], 2, use_gpus=False, threads=3)[0].threads == 3


def test_engines_loaded_for_one_order_refuse_both_orders_before_touching_ray():
    from prom_local.errors import UsageError
    from prom_local.backends.ray.driver import JudgeSpec, RayScorer

    scorer = RayScorer(JudgeSpec(both_orders=False))
    with pytest.raises(UsageError, match="both orders"):
        next(scorer.finished_rows([_record(0, "q")], both_orders=True))
    assert scorer._ray is None   # refused before any connection


def test_read_ahead_passes_error_rows_at_once_and_chunks_the_rest():
    from prom_local.judging.grades import error_row
    from prom_local.backends.ray.cluster import ReadAhead

    bad = error_row("bad line", row_id="7")
    items = [_record(0, "a"), bad, _record(1, "a"), _record(2, "b")]
    seen = []
    intake = ReadAhead(items, window=256, chunk_size=8, check=seen.append)
    intake.refill(live_engines=1)
    assert intake.exhausted and intake.take_passed() == [(1, bad)] and intake.take_passed() == []
    assert [r.id for r in seen] == ["r0", "r1", "r2"]
    # The input's last records are cut small (here in two: 3 records, one engine), so that every
    # engine gets a share.
    assert [[r.id for r in chunk] for chunk in intake.queue] == [["r0", "r1"], ["r2"]]
    assert dict(intake.index_of) == {"r0": [0], "r1": [2], "r2": [3]}
    intake.queue.clear()
    assert intake.done


@pytest.mark.slow  # Ray and real inference
@needs_ray
def test_the_ray_backend_honours_on_token_and_cancel_and_refuses_the_other_order(tmp_path, cluster):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(8)])
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_options_driver.py"), cluster.address,
                             "tiny:Q4_1", str(src)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **cluster.env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert "both orders" in report["refused"]
    # Cancelled at the first row: the rows still in flight are not handed out (the next run grades them).
    assert 1 <= len(report["rows"]) < report["n"]
    # on_token got each row's whole output, as the row came back.
    assert report["tokens"] == {row["id"]: row["output"] for row in report["rows"]}
