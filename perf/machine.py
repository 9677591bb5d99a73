"""What the benchmark ran on, and the timing helpers every part shares."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_driver_version() -> str | None:
    """The driver's CUDA version (``cuDriverGetVersion``) and, if nvidia-smi answers, the driver build."""
    api = None
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            api = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except OSError:
        pass
    build = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        build = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    if api and build:
        return f"{build} (CUDA {api})"
    return build or (f"CUDA {api}" if api else None)


def loadavg() -> str | None:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "device": str(device),
        "device_name": cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - a dependency of the project
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cuda_driver=cuda_driver_version(),
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of ``fn()`` (the device synchronised before and after) and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def timing(images: int, steps: int, seconds: float, mean_loss: float) -> dict:
    """A timed training run as the report stores it."""
    return {
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "images": images,
        "steps": steps,
        "mean_loss": mean_loss,
    }
