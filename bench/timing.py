"""Stage timers: ``perf_counter`` on CPU, CUDA events on GPU.

Each timer offers ``with timer.stage(name): ...`` and :meth:`collect`, which returns the
milliseconds of every stage of the iteration and resets the timer. The CUDA timer records an
event pair around each stage and synchronises once, at :meth:`collect`, so measuring does not
serialise the stages more than the work itself does; the CPU timer reads ``perf_counter`` on
both sides of the stage (CPU work is synchronous).
"""

import contextlib
import time


class CpuTimer:
    """Wall-clock stage timer for CPU execution."""

    kind = "perf_counter"

    def __init__(self):
        self._elapsed = {}

    @contextlib.contextmanager
    def stage(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._elapsed[name] = self._elapsed.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def collect(self):
        """``{stage: milliseconds}`` of the stages run since the last call."""
        elapsed, self._elapsed = self._elapsed, {}
        return elapsed


class CudaTimer:
    """CUDA-event stage timer: device time between two events on the current stream."""

    kind = "cuda_events"

    def __init__(self, device):
        import torch

        self._torch = torch
        self._device = device
        self._events = []

    @contextlib.contextmanager
    def stage(self, name):
        cuda = self._torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._events.append((name, start, end))

    def collect(self):
        """Synchronise, then ``{stage: milliseconds}`` of the stages run since the last call."""
        self._torch.cuda.synchronize(self._device)
        elapsed = {}
        for name, start, end in self._events:
            elapsed[name] = elapsed.get(name, 0.0) + start.elapsed_time(end)
        self._events = []
        return elapsed


def make_timer(device):
    """The right timer for a ``torch.device`` (or its string)."""
    import torch

    device = torch.device(device)
    return CudaTimer(device) if device.type == "cuda" else CpuTimer()


def synchronize(device):
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
