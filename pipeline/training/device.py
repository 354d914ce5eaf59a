"""Device, precision and seeding: GPU when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.errors import ParamsError
from pipeline.params import ComputePrecision

CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")  # torch.cpu.get_capabilities() keys of native bf16 arithmetic


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision`` (auto: bf16/fp16 on CUDA, none on CPU); None = full fp32."""
    if mixed_precision == "fp32" or (mixed_precision == "auto" and device.type != "cuda"):
        return None
    if mixed_precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes in bf16 natively (x86 AVX512-BF16 or AMX), where bf16 autocast speeds training up."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(feature) is True for feature in CPU_BF16_FEATURES)


def training_precision(device: torch.device, mixed_precision: str) -> ComputePrecision:
    """The precision every training stage trains in for its ``mixed_precision`` (``teacher.``, ``student.``,
    ``baseline.``, ``mkd.training.<architecture>.mixed_precision``), given to Accelerate.

    ``auto``: bf16 on CUDA when supported (fp16, with Accelerate's grad scaler, otherwise); on CPU bf16 when the CPU
    has native bf16, else fp32. Inference precision is ``autocast_dtype``'s business, not this function's.
    """
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ParamsError("teacher.mixed_precision: fp16 training needs a GPU; on CPU use auto, bf16 or fp32")
    if mixed_precision != "auto":
        return mixed_precision  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context for ``dtype``, or a no-op when running in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def use_threads(threads: int | None) -> None:
    """Pin torch's CPU threads (None: torch's default, one per core). Training results change in the last bits with
    the thread count, so a pinned count makes them independent of the machine's core count."""
    if threads is not None:
        torch.set_num_threads(threads)
