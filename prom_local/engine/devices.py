"""The devices llama.cpp itself sees (CUDA, Metal, Vulkan... and the CPU), with their memory.

nvidia-smi only knows NVIDIA GPUs and is not always installed; ggml's device registry is what the
loaded build will actually use, whatever the backend. The Python binding does not wrap it, so it is
read here through ctypes from the ggml library that llama-cpp-python ships beside libllama.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..units import MiB

# enum ggml_backend_dev_type
_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str                  # cpu | gpu | igpu | accel
    free_bytes: int | None
    total_bytes: int | None

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("gpu", "igpu")


def _ggml_library():
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent / "lib"
    names = {"darwin": ["libggml.dylib"], "win32": ["ggml.dll"]}.get(sys.platform, ["libggml.so"])
    for name in names:
        if (folder / name).exists():
            return ctypes.CDLL(str(folder / name))
    return None


def backend_devices() -> list[Device]:
    """Every device of the loaded llama.cpp build; [] where the registry cannot be read."""
    from .llama import require_llama  # initialises the backends, which registers the devices

    try:
        require_llama()
        lib = _ggml_library()
        if lib is None:
            return []
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.restype = ctypes.c_char_p
            fn.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
        out = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            out.append(Device(lib.ggml_backend_dev_name(dev).decode("utf-8", "replace"),
                              lib.ggml_backend_dev_description(dev).decode("utf-8", "replace"),
                              _DEV_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                              free.value or None, total.value or None))
        return out
    except (OSError, AttributeError, ImportError):
        return []


def visible_ids(env: dict | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as the GPUs this process's CUDA calls see, in their order (each an
    index or a UUID, as nvidia-smi's --id takes it); None when it is unset or empty: every GPU.
    Ray gives each engine actor its own GPU this way, and nvidia-smi ignores the variable."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES") or ""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    return ids or None


def visible_gpu(env: dict | None = None) -> str | None:
    """The device this process's CUDA calls see first, when CUDA_VISIBLE_DEVICES picks one."""
    ids = visible_ids(env)
    return ids[0] if ids else None


def nvidia_gpus(env: dict | None = None) -> list[Device] | None:
    """The NVIDIA GPUs this process sees, as nvidia-smi reports them: those CUDA_VISIBLE_DEVICES
    names, in its order, else all; None when nvidia-smi is absent or fails. The one reader of
    nvidia-smi (doctor lists these; the offload plan takes the first one's free memory)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return visible_gpus(out, env)


def visible_gpus(smi_csv: str, env: dict | None = None) -> list[Device]:
    """nvidia-smi's `index,uuid,name,memory.total,memory.free` CSV (no header, no units) -> the
    GPUs CUDA_VISIBLE_DEVICES names (an index, or a UUID or its prefix), in its order; all without it."""
    found: list[tuple[str, str, Device]] = []
    for line in smi_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            device = Device(f"GPU {parts[0]}", parts[2], "gpu", int(parts[4]) * MiB, int(parts[3]) * MiB)
        except ValueError:
            continue
        found.append((parts[0], parts[1], device))
    wanted = visible_ids(env)
    if wanted is None:
        return [device for _, _, device in found]
    return [device for want in wanted for index, uuid, device in found
            if want == index or (len(want) > 3 and uuid.startswith(want))]


def free_gpu_memory() -> int | None:
    """Free memory of the first CUDA device this process sees, in bytes (None: no nvidia-smi, or no
    NVIDIA GPU visible)."""
    gpus = nvidia_gpus()
    return gpus[0].free_bytes if gpus else None


def gpus_seen() -> tuple[list[Device], str]:
    """(GPUs, where the list came from): nvidia-smi when present, else llama.cpp's own registry."""
    smi = nvidia_gpus()
    if smi is not None:
        return smi, "nvidia-smi"
    return [d for d in backend_devices() if d.is_gpu], "llama.cpp device registry"
