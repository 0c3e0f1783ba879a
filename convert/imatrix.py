"""An importance matrix from Korean judge prompts, for imatrix-guided quantization (Q4_K_M and others).

llama-cpp-python does not ship llama.cpp's `llama-imatrix` tool, but it exposes what the tool is made
of: a context's `cb_eval` callback sees every graph node as it is computed, and
`llama_model_quantize_params.imatrix` takes the result. This module does what `llama-imatrix` does:
for each matrix multiplication by a `blk.*` weight, it adds up the squares of the input activations,
column by column, over every token of the calibration prompts; the quantizer then weights its
rounding error by mean(x^2) of each column. The prompts are judge records rendered exactly as
`score` renders them, followed by their reference feedback when the record has one.

The result is written in llama.cpp's GGUF imatrix layout (`<tensor>.in_sum2`, `<tensor>.counts`,
`imatrix.chunk_count`, `imatrix.chunk_size`, `imatrix.datasets`). It runs in a child process, like
the quantizer, so that its memory and a failure stay its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ._proc import run_child, worker_command

_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
GGML_TYPE_F32 = 0
GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` from the ggml.h installed with llama-cpp-python. Checked at run time
    against ggml_get_name(), so a build with another layout fails loudly instead of reading junk."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def calibration_prompts(data: Path, model_path: Path, profile_name: str) -> tuple[list[list[int]], int]:
    """(token ids of each judge prompt, records skipped) from a JSONL of judge records, rendered with
    the model's own chat template and tokenized as `score` tokenizes them (prompt_tokens: record text
    is always plain text, so a record that writes "<|eot_id|>" gets those characters, never the
    control token). A record's `orig_feedback`/`feedback` (and score) is appended as the answer,
    plain text too, then the end-of-turn token, so the activations of writing Korean feedback are
    measured as well."""
    from prom_local.engine import load_vocab_only
    from prom_local.errors import ConvertError, InputError
    from prom_local.judging.prompt_tokens import tokenize_prompt
    from prom_local.judging.prompts import get_profile
    from prom_local.judging.records import record_from_mapping

    profile = get_profile(profile_name)
    model = load_vocab_only(model_path)
    prompts, skipped = [], 0
    try:
        eot = model.tokenize("<|eot_id|>", special=True) if "<|eot_id|>" in (model.chat_template or "") else []
        with open(data, encoding="utf-8") as handle:
            for n, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    record = record_from_mapping(row, line=n, source=str(data))
                except (json.JSONDecodeError, InputError):
                    skipped += 1
                    continue
                ids = tokenize_prompt(record, profile, model)
                feedback = row.get("orig_feedback") or row.get("feedback")
                if isinstance(feedback, str) and feedback.strip():
                    answer = feedback.strip()
                    if record.gold_score is not None and "[RESULT]" not in feedback:
                        answer += f"{profile.score_continuation}{record.gold_score}"
                    ids += model.tokenize(answer, special=False) + eot
                prompts.append(ids)
    except OSError as exc:
        raise ConvertError(f"--imatrix-data {data}: {exc.strerror}") from None
    finally:
        model.close()
    if not prompts:
        raise ConvertError(f"--imatrix-data {data}: no usable judge records ({skipped} skipped)")
    return prompts, skipped


@dataclass
class ImatrixResult:
    seconds: float
    peak_rss_bytes: int | None
    tokens: int
    chunks: int
    entries: int


def compute(model_path: Path, prompts: list[list[int]], out: Path, *, n_ctx: int = 4096, threads: int | None = None,
            dataset: str = "", on_progress: Callable[[int, int], None] | None = None) -> ImatrixResult:
    """Run the prompts (token ids) through `model_path` (the 16-bit GGUF) and write the imatrix to `out`."""
    from prom_local.errors import ConvertError

    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as handle:
        json.dump({"prompts": prompts, "dataset": dataset}, handle)
        prompts_path = handle.name
    cmd = worker_command("convert.imatrix", str(model_path), prompts_path, str(partial), str(n_ctx),
                         str(threads or 0))

    def on_line(line: str) -> None:
        m = _PROGRESS.match(line)
        if m and on_progress is not None:
            on_progress(int(m.group(1)), int(m.group(2)))

    try:
        run = run_child(cmd, partial=partial, capture_stdout=True, on_line=on_line, keep=20)
    finally:
        os.unlink(prompts_path)
    if run.status != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise ConvertError(f"computing the importance matrix on {model_path} failed (exit status {run.status}): "
                           + " / ".join(t.strip() for t in run.tail[-4:] if t.strip()))
    partial.replace(out)
    info = json.loads(run.stdout)
    return ImatrixResult(run.seconds, run.peak_rss_bytes, info["tokens"], info["chunks"], info["entries"])


def load(path: Path) -> dict[str, "object"]:
    """{weight name: mean(x^2) per input column} from an imatrix GGUF, as the quantizer wants it."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(path)
    sums, counts = {}, {}
    for tensor in reader.tensors:
        name = tensor.name
        if name.endswith(".in_sum2"):
            sums[name[: -len(".in_sum2")]] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        elif name.endswith(".counts"):
            counts[name[: -len(".counts")]] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    out = {}
    for name, s in sums.items():
        c = counts.get(name)
        n = float(c[0]) if c is not None and len(c) else 0.0
        out[name] = (s / n).astype(np.float32) if n > 0 else np.ones_like(s)
    return out


# ----------------------------------------------------------------------------------------------
# The child process.

def _worker(argv: list[str]) -> int:
    import numpy as np

    import llama_cpp as ll

    model_path, prompts_path, out_path, n_ctx, threads = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    job = json.loads(Path(prompts_path).read_text("utf-8"))
    prompts: list[list[int]] = job["prompts"]

    base = ctypes.CDLL(str(Path(ll.__file__).parent / "lib" / "libggml-base.so"))
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    base.ggml_get_name.restype = ctypes.c_char_p
    base.ggml_get_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    base.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    base.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    base.ggml_nbytes.restype = ctypes.c_size_t
    base.ggml_nbytes.argtypes = [ctypes.c_void_p]
    mul_mat = {b"MUL_MAT"}

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    errors: list[str] = []

    def weight_name(src0: int) -> str:
        name = base.ggml_get_name(src0).decode("utf-8", "replace")
        return name.split("#", 1)[-1] if "#" in name else name  # backend-split copies: "CUDA0#blk.0..."

    def collect(t_addr: int, ask: bool, _user: int) -> bool:
        try:
            t = GgmlTensor.from_address(t_addr)
            if ask:
                if base.ggml_op_name(t.op) not in mul_mat or not t.src[0] or not t.src[1]:
                    return False
                src1 = GgmlTensor.from_address(t.src[1])
                return src1.type == GGML_TYPE_F32 and weight_name(t.src[0]).startswith("blk.")
            if base.ggml_get_name(t_addr) != t.name:  # the struct layout is not this build's
                raise RuntimeError("ggml_tensor layout mismatch")
            src1 = GgmlTensor.from_address(t.src[1])
            ne0, rows = src1.ne[0], src1.ne[1] * src1.ne[2] * src1.ne[3]
            if src1.nb[0] != 4 or src1.nb[1] != 4 * ne0 or src1.nb[2] != src1.nb[1] * src1.ne[1]:
                raise RuntimeError("non-contiguous activations")
            nbytes = base.ggml_nbytes(t.src[1])
            if src1.buffer and base.ggml_backend_buffer_is_host(src1.buffer):
                x = np.ctypeslib.as_array((ctypes.c_float * (nbytes // 4)).from_address(src1.data))
            else:
                x = np.empty(nbytes // 4, dtype=np.float32)
                base.ggml_backend_tensor_get(t.src[1], x.ctypes.data, 0, nbytes)
            x = x[: rows * ne0].reshape(rows, ne0).astype(np.float64)
            name = weight_name(t.src[0])
            acc = sums.get(name)
            if acc is None:
                acc = sums[name] = np.zeros(ne0, dtype=np.float64)
                counts[name] = 0
            acc += np.einsum("ij,ij->j", x, x)
            counts[name] += rows
            return True
        except Exception as exc:  # an exception must not cross into C; stop the graph instead
            errors.append(f"{type(exc).__name__}: {exc}")
            return False

    callback = ll.ggml_backend_sched_eval_callback(collect)  # kept referenced until the end

    ll.llama_backend_init()
    mparams = ll.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = ll.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        print(f"could not load {model_path}", file=sys.stderr)
        return 1
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = min(n_ctx, 2048)
    cparams.n_ubatch = min(n_ctx, 512)
    cparams.n_threads = cparams.n_threads_batch = threads or len(os.sched_getaffinity(0))
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    cparams.no_perf = True
    ctx = ll.llama_init_from_model(model, cparams)
    if not ctx:
        print("could not create a context", file=sys.stderr)
        return 1
    mem = ll.llama_get_memory(ctx)

    chunks = []
    for tokens in prompts:
        chunks += [tokens[i:i + n_ctx] for i in range(0, len(tokens), n_ctx)]
    total = sum(len(c) for c in chunks)
    done = 0
    # Every token is an output: llama.cpp's graph skips the last layer's FFN for tokens whose logits
    # nobody asked for, and then that layer's statistics would come from one token a batch.
    batch = ll.llama_batch_init(cparams.n_batch, 0, 1)
    for chunk in chunks:
        ll.llama_memory_clear(mem, True)
        for i in range(0, len(chunk), cparams.n_batch):
            piece = chunk[i:i + cparams.n_batch]
            for j, token in enumerate(piece):
                batch.token[j] = token
                batch.pos[j] = i + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = 1
            batch.n_tokens = len(piece)
            rc = ll.llama_decode(ctx, batch)
            if errors:
                print(f"importance matrix: {errors[0]}", file=sys.stderr)
                return 1
            if rc != 0:
                print(f"llama_decode failed with {rc}", file=sys.stderr)
                return 1
            done += len(piece)
            print(f"[{done:6d}/{total:6d}] tokens", file=sys.stderr, flush=True)
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    if not sums:
        print("no matrix multiplications were observed", file=sys.stderr)
        return 1

    import gguf

    writer = gguf.GGUFWriter(out_path, arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [job.get("dataset") or "judge-prompts"])
    writer.add_uint32("imatrix.chunk_count", len(chunks))
    writer.add_uint32("imatrix.chunk_size", n_ctx)
    for name in sorted(sums):
        writer.add_tensor(f"{name}.in_sum2", sums[name].astype(np.float32))
        writer.add_tensor(f"{name}.counts", np.array([counts[name]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(json.dumps({"tokens": total, "chunks": len(chunks), "entries": len(sums)}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
