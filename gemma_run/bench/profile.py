"""Where a benchmark's device time goes: torch.profiler over the timed part of a run, written as a short table.

``task.profile=true`` (task=bench_train) records the timed steps and writes ``profile.txt`` beside the bench's
JSON: the kernels (or, on a CPU, the operators) that took the most device time, with their share of it, then
torch's own summary table. Recording slows the steps it records, so a profiled run's tokens/s is not a figure
to quote (the row says ``profiled``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROWS = 40  # kernels listed


class Recorder:
    """A torch.profiler session started and stopped by the bench (``start()`` ... ``stop(path)``)."""

    def __init__(self) -> None:
        self._prof: Any = None

    @property
    def recording(self) -> bool:
        return self._prof is not None

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._prof = profile(activities=activities)
        self._prof.__enter__()

    def stop(self, path: Path) -> Path:
        """End the recording and write its table to ``path``."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        cuda = torch.cuda.is_available()
        path.write_text(summary(events, cuda) + "\n\n"
                        + events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                       row_limit=ROWS, max_name_column_width=90) + "\n")
        return path


def summary(events: Any, cuda: bool) -> str:
    """The top ``ROWS`` entries by self time: milliseconds, share, calls and mean microseconds each. On a GPU the
    entries are the kernels (device-side events) alone, so their sum is the device's busy time; operators, which
    would count their kernels a second time, are in torch's table below it."""
    from torch.autograd import DeviceType

    def self_time(e: Any) -> float:  # microseconds
        return float(e.self_device_time_total if cuda else e.self_cpu_time_total)

    rows = sorted((e for e in events if self_time(e) > 0 and (not cuda or e.device_type == DeviceType.CUDA)),
                  key=self_time, reverse=True)
    total = sum(self_time(e) for e in rows) or 1.0
    lines = [f"{'device kernel' if cuda else 'cpu'} time {total / 1e3:,.1f} ms in all",
             f"{'ms':>10} {'share':>7} {'calls':>7} {'us each':>9}  name"]
    for e in rows[:ROWS]:
        t = self_time(e)
        lines.append(f"{t / 1e3:>10,.2f} {t / total:>7.1%} {e.count:>7} {t / max(e.count, 1):>9,.1f}  {e.key[:100]}")
    return "\n".join(lines)
