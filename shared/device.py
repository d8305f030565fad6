"""Device and precision choice shared by training, sampling and the workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum

import torch


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast to bfloat16 for matmuls and convolutions, float32 elsewhere


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto`: bf16 on CUDA, fp32 elsewhere (CPUs without native bf16 run it slower than fp32)."""
    if name == "auto":
        return Precision.BF16 if device.type == "cuda" else Precision.FP32
    return Precision(name)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is passed to torch.device."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision | str) -> Iterator[None]:
    """bf16 autocast when asked for, a no-op for fp32."""
    precision = Precision(precision)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision is Precision.BF16):
        yield


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op pool at `threads` for the block, restored after.

    The OpenVINO path runs its network on OpenVINO's own threads; the samplers' torch operations between
    its calls are small (a few 16 x 3 x 32 x 32 tensors), but on two threads torch's idle OpenMP worker
    keeps spinning after each of them, on the core an OpenVINO stream needs (DDPM at 16 rows on 2 cores:
    a step took 151 / 163 ms at the 10th percentile / median with torch on 2 threads, 148 / 156 ms on
    one, 144 / 158 ms for the network alone).

    For a caller that runs torch from one thread at a time (a worker runs one job at a time): the pool
    size is process-wide state, so torch calls made meanwhile from other threads see it too, and a thread
    that makes its first torch call meanwhile keeps it."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)
