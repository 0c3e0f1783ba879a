"""The devices llama.cpp itself sees (CUDA, Metal, Vulkan... and the CPU), with their memory.

nvidia-smi only knows NVIDIA GPUs and is not always installed; ggml's device registry is what the
loaded build will actually use, whatever the backend. The Python binding does not wrap it, so it is
read here through ctypes from the ggml library that llama-cpp-python ships beside libllama.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .offload import MiB

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


def nvidia_gpus() -> list[Device] | None:
    """NVIDIA GPUs as nvidia-smi reports them; None when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(Device(f"GPU {parts[0]}", parts[1], "gpu", int(parts[3]) * MiB, int(parts[2]) * MiB))
        except ValueError:
            continue
    return gpus


def gpus_seen() -> tuple[list[Device], str]:
    """(GPUs, where the list came from): nvidia-smi when present, else llama.cpp's own registry."""
    smi = nvidia_gpus()
    if smi is not None:
        return smi, "nvidia-smi"
    return [d for d in backend_devices() if d.is_gpu], "llama.cpp device registry"
