"""How busy the machine was when a bench ran, printed beside its wall-clock timings.

The benches time wall clock, which is what a study's latency is made of; on a small machine
shared with other work (two cores, other processes) the same code takes several times longer
when the run queue is long. The 1-minute load average and the CPU count, taken when the run
ends, let a reader tell a slow result from a busy machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MachineLoad:
    load_average_1min: float | None  # None where the platform has no load average
    cpus: int

    @classmethod
    def now(cls) -> MachineLoad:
        try:
            load: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        return cls(load, os.cpu_count() or 1)

    def note(self) -> str:
        """One line for under a table."""
        if self.load_average_1min is None:
            return f"machine: {self.cpus} CPU(s), load average not available"
        busy = " (busy: other work shared the CPUs)" if self.load_average_1min > self.cpus else ""
        return (
            f"machine: {self.cpus} CPU(s), 1-minute load average {self.load_average_1min:.1f} "
            f"when the run ended{busy}"
        )
