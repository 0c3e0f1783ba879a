"""The hub code paths, with no hub: huggingface-hub's own functions (model_info, snapshot_download,
hf_hub_download) run for real against a Hugging Face cache that the test lays out on disk, with
HF_HUB_OFFLINE=1 (or an endpoint that refuses connections), exactly as they would on a machine that
downloaded those repos earlier.

Cache layout, as huggingface-hub writes it: <cache>/models--org--name/{refs/main, blobs/<etag>,
snapshots/<commit>/<file> -> ../../blobs/<etag>}; an LFS file's etag is its sha256, a small file's the
git blob sha1.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT as REPO_ROOT, cli_env, run_cli

pytestmark = pytest.mark.slow

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
REGISTRY_REPO = "RichardErkhov/nayohan_-_llama3-8b-it-prometheus-ko-gguf"
REGISTRY_FILE = "llama3-8b-it-prometheus-ko.{quant}.gguf"


def _etag(path: Path, lfs: bool) -> str:
    if lfs:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_to_hf_cache(cache: Path, repo: str, files: dict[str, Path], commit: str = FAKE_COMMIT,
                    *, etags: dict[str, str] | None = None) -> Path:
    """Lay `files` out as a cached snapshot of `repo` at `commit` (also what refs/main points to)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        etag = (etags or {}).get(name) or _etag(src, lfs=name.endswith((".safetensors", ".gguf", ".bin")))
        blob = root / "blobs" / etag
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                blob.write_bytes(src.read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def hub_env(cache: Path, **extra: str) -> dict[str, str]:
    return cli_env(HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"), **extra)


def gguf(store: Path, name: str, quant: str) -> Path:
    return store / name / f"{name}.{quant}.gguf"


# ------------------------------------------------------------------------------------------------
# pull

def test_pull_repo_file_from_the_cache_offline(tiny_llama3_store, tmp_path):
    src_store, name = tiny_llama3_store
    q8 = gguf(src_store, name, "Q8_0")
    cache = tmp_path / "hub"
    add_to_hf_cache(cache, "someone/tiny-llama3-GGUF", {"tiny-llama3.Q8_0.gguf": q8})
    store = tmp_path / "models"
    result = run_cli("pull", "someone/tiny-llama3-GGUF", "tiny-llama3.Q8_0.gguf", "--out", store, "--json",
                     env=hub_env(cache))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    dest = gguf(store, "tiny-llama3", "Q8_0")
    assert report["path"] == str(dest) and dest.read_bytes() == q8.read_bytes()
    manifest = json.loads((store / "tiny-llama3" / "manifest.json").read_text("utf-8"))
    entry = manifest["files"]["Q8_0"]
    assert entry["sha256"] == hashlib.sha256(q8.read_bytes()).hexdigest() == entry["expected_sha256"]
    assert entry["verified_against"] == "hf-cache-etag"
    assert entry["source"] == {"kind": "pull", "repo": "someone/tiny-llama3-GGUF", "file": "tiny-llama3.Q8_0.gguf",
                               "revision": "main", "commit": FAKE_COMMIT,
                               "fingerprint": f"pull:someone/tiny-llama3-GGUF@{FAKE_COMMIT}/tiny-llama3.Q8_0.gguf"}
    assert entry["file_type"] == "Q8_0" and manifest["profile"] == "prometheus-ko"
    assert manifest["gguf"]["tokenizer_pre"] == "llama-bpe"
    assert not list((store / "tiny-llama3").glob("*.partial"))

    info = run_cli("info", "tiny-llama3:Q8_0", "--models-dir", store, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["quant"] == "Q8_0"


def test_pull_registry_short_name_and_rerun_is_verified_not_copied(tiny_llama3_store, tmp_path):
    from prom_local.store.models import list_store, resolve_model

    src_store, name = tiny_llama3_store
    q4 = gguf(src_store, name, "Q4_K_M")
    cache = tmp_path / "hub"
    add_to_hf_cache(cache, REGISTRY_REPO, {REGISTRY_FILE.format(quant="Q4_K_M"): q4})
    store = tmp_path / "models"
    result = run_cli("pull", "prometheus-ko:Q4_K_M", "--out", store, env=hub_env(cache))
    assert result.returncode == 0, result.stderr
    dest = gguf(store, "prometheus-ko", "Q4_K_M")
    assert dest.read_bytes() == q4.read_bytes()
    resolved = resolve_model("prometheus-ko", store)  # default quant of the registry entry
    assert resolved.path == dest and resolved.profile == "prometheus-ko"
    rows = list_store(store)  # what `prom-local models` shows
    assert [(r["name"], r["quant"]) for r in rows] == [("prometheus-ko", "Q4_K_M")]
    assert rows[0]["sha256"] == hashlib.sha256(q4.read_bytes()).hexdigest()

    mtime = dest.stat().st_mtime_ns
    again = run_cli("pull", "prometheus-ko:Q4_K_M", "--out", store, "--json", env=hub_env(cache))
    assert again.returncode == 0, again.stderr
    assert [s["stage"] for s in json.loads(again.stdout)["stages"]] == ["verify"]
    assert dest.stat().st_mtime_ns == mtime


def test_pull_offline_and_not_cached_leaves_nothing(tmp_path):
    store = tmp_path / "models"
    cache = tmp_path / "hub"
    result = run_cli("pull", "prometheus-ko:Q8_0", "--out", store, env=hub_env(cache))
    assert result.returncode == 6
    err = " ".join(result.stderr.split())
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in err and REGISTRY_FILE.format(quant="Q8_0") in err
    assert "Traceback" not in result.stderr
    assert not store.exists()
    # No network at all (not offline mode): a refused connection, the same clear answer, fast.
    started = time.monotonic()
    result = run_cli("pull", "someone/x-GGUF", "x.Q8_0.gguf", "--out", store,
                     env=hub_env(cache, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9"))
    assert result.returncode == 6, result.stderr
    assert "the hub cannot be reached" in " ".join(result.stderr.split())
    assert time.monotonic() - started < 20  # no half-minute of connection retries
    assert not store.exists()


def test_pull_rejects_a_corrupt_cached_file(tiny_llama3_store, tmp_path):
    src_store, name = tiny_llama3_store
    q8 = gguf(src_store, name, "Q8_0")
    damaged = tmp_path / "damaged.gguf"
    data = q8.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "hub"
    # The blob keeps the name (etag = sha256) the hub gave the intact file; its bytes are cut short.
    add_to_hf_cache(cache, "someone/tiny-llama3-GGUF", {"t.Q8_0.gguf": damaged},
                    etags={"t.Q8_0.gguf": hashlib.sha256(data).hexdigest()})
    store = tmp_path / "models"
    result = run_cli("pull", "someone/tiny-llama3-GGUF", "t.Q8_0.gguf", "--out", store, env=hub_env(cache))
    assert result.returncode == 7, result.stderr
    err = " ".join(result.stderr.split())
    assert "sha256" in err and hashlib.sha256(data).hexdigest() in err and "corrupt" in err
    assert "Traceback" not in result.stderr
    assert not store.exists() or not any(store.rglob("*"))


# ------------------------------------------------------------------------------------------------
# convert from the hub (cache), interrupted and resumed

def test_convert_hub_repo_offline_interrupted_then_resumed(tiny_llama3_checkpoint, tiny_llama3_store, tmp_path):
    src_store, tiny_name = tiny_llama3_store
    cache = tmp_path / "hub"
    files = {p.name: p for p in tiny_llama3_checkpoint.iterdir()}
    files["README.md"] = tmp_path / "README.md"  # not needed for conversion: must not be required
    files["README.md"].write_text("# tiny\n")
    add_to_hf_cache(cache, "someone/tiny-llama3", files)
    store = tmp_path / "models"
    manifest_path = store / "tiny-llama3" / "manifest.json"
    env = hub_env(cache)

    # Interrupt (Ctrl-C) once the 16-bit GGUF is made and recorded, while quantizing.
    cmd = [sys.executable, "-m", "prom_local", "convert", "someone/tiny-llama3", "--out", str(store),
           "--quant", "Q8_0", "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest_path.exists() and "F16" in json.loads(manifest_path.read_text("utf-8"))["files"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "re-run the same command to resume" in err
    model_dir = store / "tiny-llama3"
    assert (model_dir / "tiny-llama3.F16.gguf").exists()
    assert not (model_dir / "tiny-llama3.Q8_0.gguf").exists()
    assert not list(model_dir.glob("*.partial"))

    # Resume with the same command: the F16 is verified, only quantizing runs.
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stages = {(s["stage"], s["target"]): s["status"] for s in json.loads(result.stdout)["stages"]}
    assert stages[("convert", "tiny-llama3.F16.gguf")] == "skipped"
    assert stages[("quantize", "tiny-llama3.Q8_0.gguf")] == "ran"
    assert stages[("cleanup", "tiny-llama3.F16.gguf")] == "ran"
    assert not any(stage == "download" for stage, _ in stages)
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "tiny-llama3.Q8_0.gguf"]
    manifest = json.loads(manifest_path.read_text("utf-8"))
    assert manifest["source"] == {"kind": "hub", "repo": "someone/tiny-llama3", "revision": "main",
                                  "commit": FAKE_COMMIT, "fingerprint": f"hub:someone/tiny-llama3@{FAKE_COMMIT}"}
    assert set(manifest["files"]) == {"Q8_0"}
    # Same checkpoint bytes, same converter, same quantizer: the same file as the local conversion.
    assert manifest["files"]["Q8_0"]["sha256"] == hashlib.sha256(
        gguf(src_store, tiny_name, "Q8_0").read_bytes()).hexdigest()


def test_convert_hub_offline_errors(tiny_llama3_checkpoint, tmp_path):
    import torch

    cache = tmp_path / "hub"
    store = tmp_path / "models"
    result = run_cli("convert", "someone/never-downloaded", "--out", store, env=hub_env(cache))
    assert result.returncode == 6
    err = " ".join(result.stderr.split())
    assert "someone/never-downloaded@main" in err and "HF_HUB_OFFLINE" in err
    assert "Traceback" not in result.stderr

    # A cached repo whose only weights are a pickle is refused even offline.
    pickle = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2)}, pickle)
    add_to_hf_cache(cache, "someone/pickled", {"config.json": tiny_llama3_checkpoint / "config.json",
                                               "tokenizer.json": tiny_llama3_checkpoint / "tokenizer.json",
                                               "pytorch_model.bin": pickle})
    result = run_cli("convert", "someone/pickled", "--out", store, env=hub_env(cache))
    assert result.returncode == 5, result.stderr
    assert "pickled" in result.stderr and "--allow-pickle" in result.stderr
    assert not store.exists()
