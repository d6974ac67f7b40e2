"""Peak memory of a block of code: CUDA peak allocation on a GPU, peak resident set growth on CPU.

On CUDA the caching allocator tracks its own peak, which
``torch.cuda.reset_peak_memory_stats`` resets before the block.

On Linux CPUs the kernel tracks the process's peak resident set size
(``VmHWM`` in ``/proc/self/status``), and writing ``5`` to
``/proc/self/clear_refs`` resets it to the current size (Linux 4.0 and later).
That peak misses nothing, unlike sampling. Where ``clear_refs`` is not
writable, a background thread samples the resident set size with psutil
every millisecond, which can miss allocations shorter than that.

Before each measurement on CPU, glibc's ``malloc_trim(0)`` returns freed heap
pages to the system. Without it, glibc keeps the pages of an earlier call
mapped, a later call reuses them, and its resident set size barely grows.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["MemoryMeasurement", "PeakMemoryMeter"]

logger = logging.getLogger(__name__)

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
# "5" resets the peak resident set size, see proc(5).
_RESET_PEAK_RSS = "5"
_SAMPLE_SECONDS = 0.001


@dataclass
class MemoryMeasurement:
    """The memory of one measured block, filled in when the block exits.

    Attributes:
        source: ``"cuda_max_memory_allocated"``, ``"proc_vmhwm"`` or ``"psutil_sampling"``.
        baseline_bytes: Allocated (CUDA) or resident (CPU) bytes when the block started.
        peak_bytes: The peak during the block, on the same scale.
        growth_bytes: ``peak_bytes - baseline_bytes``: what the block itself needed at most.
    """

    source: str
    baseline_bytes: int = 0
    peak_bytes: int = 0

    @property
    def growth_bytes(self) -> int:
        """Peak minus baseline, at least 0."""
        return max(0, self.peak_bytes - self.baseline_bytes)


def _status_kib(field: str) -> int:
    with open(_STATUS, encoding="ascii") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    if match is None:
        msg = f"{_STATUS} has no {field} line"
        raise OSError(msg)
    return int(match.group(1))


def _can_reset_peak_rss() -> bool:
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as handle:
            handle.write(_RESET_PEAK_RSS)
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        # Not glibc (macOS, musl): nothing to trim.
        return
    trim(0)


class PeakMemoryMeter:
    """Measure peak memory of code blocks on one device.

    Args:
        device: The device that holds the model's activations.

    Raises:
        ImportError: On a CPU without a writable ``/proc/self/clear_refs`` when
            psutil is missing; the message gives the pip command.

    Example:
        >>> meter = PeakMemoryMeter(torch.device("cpu"))
        >>> with meter.measure() as memory:
        ...     block = torch.ones(1 << 24)
        >>> memory.growth_bytes > 0
        True
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.source = "cuda_max_memory_allocated"
        elif _can_reset_peak_rss():
            self.source = "proc_vmhwm"
        else:
            try:
                import psutil  # noqa: F401
            except ImportError as error:
                msg = 'measuring CPU memory here needs psutil; install it with: pip install "promptdistill-rag[bench]"'
                raise ImportError(msg) from error
            self.source = "psutil_sampling"

    @contextlib.contextmanager
    def measure(self) -> Iterator[MemoryMeasurement]:
        """Measure the block; the yielded measurement is complete once the block exits."""
        measurement = MemoryMeasurement(source=self.source)
        if self.source == "cuda_max_memory_allocated":
            with self._measure_cuda(measurement):
                yield measurement
        elif self.source == "proc_vmhwm":
            with self._measure_vmhwm(measurement):
                yield measurement
        else:
            with self._measure_sampling(measurement):
                yield measurement

    @contextlib.contextmanager
    def _measure_cuda(self, measurement: MemoryMeasurement) -> Iterator[None]:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        measurement.baseline_bytes = torch.cuda.memory_allocated(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            measurement.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    @contextlib.contextmanager
    def _measure_vmhwm(self, measurement: MemoryMeasurement) -> Iterator[None]:
        _malloc_trim()
        with open(_CLEAR_REFS, "w", encoding="ascii") as handle:
            handle.write(_RESET_PEAK_RSS)
        measurement.baseline_bytes = _status_kib("VmRSS") * 1024
        try:
            yield
        finally:
            measurement.peak_bytes = _status_kib("VmHWM") * 1024

    @contextlib.contextmanager
    def _measure_sampling(self, measurement: MemoryMeasurement) -> Iterator[None]:
        import psutil

        process = psutil.Process()
        _malloc_trim()
        measurement.baseline_bytes = process.memory_info().rss
        peak = [measurement.baseline_bytes]
        stop = threading.Event()

        def sample() -> None:
            # Tensor kernels release the GIL, so this thread keeps sampling during them.
            while not stop.wait(_SAMPLE_SECONDS):
                peak[0] = max(peak[0], process.memory_info().rss)

        thread = threading.Thread(target=sample, name="promptdistill-rss-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            measurement.peak_bytes = max(peak[0], process.memory_info().rss)
