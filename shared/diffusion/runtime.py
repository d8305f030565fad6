"""Which engine runs the UNet, in which precision: eager torch, or the same weights exported to OpenVINO.

The samplers only ever call `network(x, t, labels) -> output`; this module supplies that callable. The
choice is made once, when the weights are loaded, from what the machine has (`choose`), and is said in
the worker's log and in `GET /models/info` (`RuntimeChoice.describe`), never silently.

Measured on a 2-core AMD EPYC with AVX512-BF16, one thread, the shipped 1.5M-parameter UNet, ms per
network evaluation (a guided image costs two rows; BENCHMARKS.md, item 1, has the sampler-level figures):

| batch (rows) | torch fp32 (channels_last) | torch bf16 autocast | OpenVINO f32 | OpenVINO bf16 |
| ---: | ---: | ---: | ---: | ---: |
| 1 | 14.6 | 13.8 | 9.7 (10.6) | 6.6 (6.6) |
| 16 | 156 | 126 | 116 (151) | 68 (76) |
| 32 | 290 | 198 | 246 (303) | 131 (158) |

OpenVINO runs the UNet's export form (`export.py`); in brackets the plain export, measured in the same
run (the other core busy; the torch columns are from an earlier, idle run).

OpenVINO compiles one static-shape model per batch size on first use (about 0.25 s each; static shapes
measured 15-25% faster than one dynamic-batch model), after a one-off export of about 3 s. OpenVINO fp32
gives torch's outputs to ~1e-5; bf16 moves the network's output by up to ~0.02 per element, which at
N = 1000 left FID and class agreement within fp32's own seed-to-seed spread (models/README.md). Batch
size does not change OpenVINO's images: a batch of 16 and each image alone gave identical uint8 values.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.device import Precision
from shared.diffusion.export import EXPORT_FORM, export_view

logger = logging.getLogger(__name__)


class Runtime(StrEnum):
    TORCH = "torch"
    OPENVINO = "openvino"


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def decline_openvino_telemetry() -> bool:
    """Record "no" to OpenVINO's usage telemetry where the machine's operator has recorded no choice.

    `ov.convert_model` sends an event to Google Analytics unless the consent file
    (~/intel/openvino_telemetry) says no, from a forked process per event. Forked from a worker's threads it
    can deadlock on a lock another thread held, and with no network it waits; either way it outlives a
    killed worker (the integration tests' SIGKILLed workers left such orphans). This writes the file
    `opt_in_out --opt_out` writes, without that script's own event; an explicit opt-in is kept. Returns
    whether telemetry is off now."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return True  # no telemetry package, no telemetry
    checker = OptInChecker()
    status = checker.check(enable_opt_in_dialog=False)
    if status is ConsentCheckResult.NO_FILE and not checker.update_result(ConsentCheckResult.DECLINED):
        logger.warning("could not record the opt-out of OpenVINO's telemetry in %s", checker.consent_file())
        return False
    return status is not ConsentCheckResult.ACCEPTED


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    precision: Precision
    reason: str

    def describe(self) -> dict[str, str]:
        """What the worker publishes in /models/info and logs at start-up."""
        openvino = self.runtime is Runtime.OPENVINO
        engine = f"openvino {openvino_version()}" if openvino else f"torch {torch.__version__}"
        graph = f"export form: {EXPORT_FORM}" if openvino else "the UNet's own modules"
        return {
            "runtime": str(self.runtime), "engine": engine, "precision": str(self.precision), "graph": graph,
            "why": self.reason,
        }  # fmt: skip


@cache
def openvino_bf16() -> bool:
    """Whether OpenVINO computes bf16 on this CPU (native, or on AVX512 without the bf16 extension)."""
    if openvino_version() is None:
        return False
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose(runtime: str, precision: str, device: torch.device) -> RuntimeChoice:
    """Resolve `auto` in either field from what this machine has; an explicit value is taken as given.

    runtime auto: OpenVINO where it runs bf16 on this CPU (2.2-2.3x eager fp32 per network evaluation);
    torch elsewhere (GPUs; CPUs where OpenVINO has no bf16: its fp32 of the plain export measured no
    faster than torch's at batch 16-32 on an AVX512 CPU, though 1.4x at batch 1; the export form's fp32 is
    1.2-1.3x torch's at 16-32 rows there, but no CPU without OpenVINO bf16 was at hand to decide this
    fallback again). precision auto: bf16 on CUDA, with OpenVINO where it has bf16,
    and with torch on CPUs with native bf16 (AVX512-BF16, AMX; emulated bf16 is slower than fp32); fp32
    elsewhere. bf16 measured within fp32's seed-to-seed spread of FID and class agreement (models/README.md).
    """
    cpu = device.type == "cpu"
    notes = []
    if runtime == "auto":
        if cpu and precision in ("auto", "bf16") and openvino_bf16():
            chosen_runtime = Runtime.OPENVINO
            notes.append("OpenVINO runs bf16 on this CPU")
        else:
            chosen_runtime = Runtime.TORCH
            notes.append(
                "the device is not a CPU" if not cpu
                else "OpenVINO is not installed" if openvino_version() is None
                else "fp32 was asked for" if precision == "fp32"
                else "OpenVINO has no bf16 on this CPU"
            )  # fmt: skip
    else:
        chosen_runtime = Runtime(runtime)
        notes.append(f"runtime {runtime} as configured")
        if chosen_runtime is Runtime.OPENVINO and not cpu:
            raise ValueError(f"the openvino runtime runs on a CPU, not on {device.type}")
        if chosen_runtime is Runtime.OPENVINO and openvino_version() is None:
            raise ValueError("the openvino runtime was asked for but OpenVINO is not installed (pip install openvino)")
    if precision != "auto":
        chosen_precision = Precision(precision)
        notes.append(f"precision {precision} as configured")
    elif chosen_runtime is Runtime.OPENVINO:
        chosen_precision = Precision.BF16 if openvino_bf16() else Precision.FP32
        notes.append("OpenVINO's bf16" if openvino_bf16() else "fp32: OpenVINO has no bf16 on this CPU")
    elif device.type == "cuda":
        chosen_precision = Precision.BF16
        notes.append("bf16 on CUDA")
    elif cpu and native_bf16_cpu():
        chosen_precision = Precision.BF16
        notes.append("the CPU has native bf16 (avx512_bf16/amx_bf16)")
    else:
        chosen_precision = Precision.FP32
        notes.append("fp32: no native bf16 on this device")
    return RuntimeChoice(chosen_runtime, chosen_precision, "; ".join(notes))


STREAM_ROWS_PER_THREAD = 4  # below this many rows per thread, one request on every thread is faster


class OpenVINONetwork:
    """The UNet's forward pass, exported once to OpenVINO and compiled per batch size (static shapes).

    Called like the torch module: `(x, t, labels) -> output` on CPU tensors. The export traces the
    module's export form (`export.export_view`: the same function in operations that stay channels-last)
    as it is at construction, weights included: later changes to the module's weights are not seen.
    `cache_dir` keeps OpenVINO's compiled blobs on disk between processes.

    With more than one thread, a batch of at least `STREAM_ROWS_PER_THREAD * threads` rows is split into
    `threads` equal chunks run side by side as OpenVINO streams of one thread each (the last chunk padded
    with copies of its last row): on 2 cores, 2 streams of 8 rows took 150 ms where one 16-row request on
    2 threads took 189 ms (a convolution network parallelises better across images than inside one).
    Smaller batches run as one request on every thread: a guided image (2 rows) took 0.21 s that way
    and 0.27 s as two streams of one row (shipped UNet, DPM-Solver++ 20).
    """

    def __init__(
        self,
        unet: nn.Module,
        precision: Precision | str = Precision.FP32,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        import openvino as ov

        config = unet.config
        self.null_label = config.null_label
        self.shape = (config.in_channels, config.image_size, config.image_size)
        example: tuple[torch.Tensor, ...] = (torch.zeros(2, *self.shape), torch.full((2,), 1, dtype=torch.long))
        if self.null_label is not None:
            example += (torch.full((2,), self.null_label, dtype=torch.long),)
        decline_openvino_telemetry()
        with torch.no_grad():  # the export form: same function, layouts OpenVINO's CPU plugin runs faster
            self.model = ov.convert_model(export_view(unet), example_input=example)
        self.core = ov.Core()
        if cache_dir is not None:
            self.core.set_property({"CACHE_DIR": str(cache_dir)})
        self.precision = Precision(precision)
        self.threads = threads or torch.get_num_threads()
        hint = "bf16" if self.precision is Precision.BF16 else "f32"
        # OpenVINO pins its threads to the first cores by default: two single-thread processes (two workers,
        # or a worker and an evaluation) would then share core 0 and leave core 1 idle. Pin only when this
        # process uses every core it may run on.
        pinning = self.threads >= len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else True
        common = {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": self.threads, "ENABLE_CPU_PINNING": pinning,
        }  # fmt: skip
        self.config: dict[str, Any] = {**common, "PERFORMANCE_HINT": "LATENCY"}
        self.stream_config: dict[str, Any] = {**common, "NUM_STREAMS": self.threads, "PERFORMANCE_HINT": "THROUGHPUT"}
        self._requests: dict[int, Any] = {}
        self._queues: dict[int, Any] = {}

    def _compile(self, batch: int, config: dict[str, Any]) -> Any:
        model = self.model.clone()
        shapes = [[batch, *self.shape], [batch]] + ([[batch]] if self.null_label is not None else [])
        model.reshape(dict(zip(model.inputs, shapes, strict=True)))
        compiled = self.core.compile_model(model, "CPU", config)
        used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.precision is Precision.BF16 and "bf16" not in used and "bfloat16" not in used:
            logger.warning("OpenVINO runs this CPU in %s although bf16 was asked for", used)
        return compiled

    def request(self, batch: int) -> Any:
        """The infer request of a model compiled for this batch size (compiled on first use)."""
        if batch not in self._requests:
            self._requests[batch] = self._compile(batch, self.config).create_infer_request()
        return self._requests[batch]

    def queue(self, chunk: int) -> tuple[Any, list[np.ndarray]]:
        """`threads` single-thread streams of a model compiled for `chunk` rows (compiled on first use), and
        the list their callback fills with each stream's output (stream i at index i)."""
        if chunk not in self._queues:
            import openvino as ov

            queue = ov.AsyncInferQueue(self._compile(chunk, self.stream_config), self.threads)
            outputs: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * self.threads

            def done(request: Any, index: int) -> None:
                outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

            queue.set_callback(done)
            self._queues[chunk] = (queue, outputs)
        return self._queues[chunk]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        inputs = [np.ascontiguousarray(x.detach().float().cpu().numpy()), t.detach().cpu().numpy().astype(np.int64)]
        if self.null_label is not None:
            rows = torch.full_like(t, self.null_label) if labels is None else labels
            inputs.append(rows.detach().cpu().numpy().astype(np.int64))
        if self.threads < 2 or batch < STREAM_ROWS_PER_THREAD * self.threads:
            out = self.request(batch).infer(inputs)[0]
            return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))  # the request reuses its buffer
        chunk = -(-batch // self.threads)
        padded = [np.concatenate([a, np.repeat(a[-1:], chunk * self.threads - batch, axis=0)]) for a in inputs]
        queue, outputs = self.queue(chunk)
        for i in range(self.threads):
            queue.start_async([a[i * chunk : (i + 1) * chunk] for a in padded], i)
        queue.wait_all()
        return torch.from_numpy(np.concatenate(outputs)[:batch])
