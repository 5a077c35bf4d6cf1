"""GPU discovery: NVML when a driver is there, explicit simulation when asked, else none.

Simulated GPUs exist only because development and CI machines have no GPU; every one of them
is marked `simulated: true` all the way to the API.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from shared.events import GpuState

log = logging.getLogger("trainyard.agent.gpus")

_SIM_RE = re.compile(r"^(\d+)x(\d+)(GB|G|MB|M)?$", re.IGNORECASE)


def parse_simulation(spec: str) -> list[tuple[int, int]]:
    """`4x80GB` -> four GPUs of 80 GiB; returns [(index, memory_mb), ...]."""
    m = _SIM_RE.match(spec.strip())
    if not m:
        raise ValueError(f"--simulate-gpus expects COUNTxMEMORY such as 4x80GB, got {spec!r}")
    count, amount, unit = int(m.group(1)), int(m.group(2)), (m.group(3) or "GB").upper()
    memory_mb = amount * 1024 if unit.startswith("G") else amount
    if not 0 < count <= 64:
        raise ValueError("--simulate-gpus: count must be 1-64")
    return [(i, memory_mb) for i in range(count)]


class GpuInventory:
    def __init__(self, host: str, simulate: str = "") -> None:
        self.host = host
        self.simulated = bool(simulate)
        self.note = ""
        self._sim = parse_simulation(simulate) if simulate else []
        self._sim_util: dict[int, float] = {}  # utilisation a simulated GPU's trainer set
        self._nvml: ModuleType | None = None  # pynvml, once initialised
        if not self.simulated:
            self._init_nvml()

    def _init_nvml(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no driver, no library: say so once, offer no GPUs
            self.note = f"no NVIDIA driver available ({exc.__class__.__name__}: {exc}); no GPUs offered"
            log.warning("%s", self.note)

    def simulate_utilisation(self, index: int, percent: float | None) -> None:
        """A simulated GPU's utilisation as its job's trainer set it (None: unmeasured again)."""
        if percent is None:
            self._sim_util.pop(index, None)
        else:
            self._sim_util[index] = min(100.0, max(0.0, percent))

    def snapshot(self, busy_pids: dict[int, list[int]] | None = None) -> list[GpuState]:
        if self.simulated:
            pids = busy_pids or {}
            return [
                GpuState(
                    index=i, uuid=f"SIM-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{self.host}/{i}')}",
                    name="Simulated GPU", memory_total_mb=mem, pids=pids.get(i, []), simulated=True,
                    utilization_pct=self._sim_util.get(i),
                )
                for i, mem in self._sim
            ]
        if self._nvml is None:
            return []
        return self._nvml_snapshot()

    def _nvml_snapshot(self) -> list[GpuState]:
        nv = self._nvml
        assert nv is not None
        out: list[GpuState] = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)

            def optional(fn: Callable[..., Any], *args: Any) -> Any:  # some boards do not report every sensor
                try:
                    return fn(*args)
                except Exception:
                    return None

            util = optional(nv.nvmlDeviceGetUtilizationRates, h)
            power = optional(nv.nvmlDeviceGetPowerUsage, h)
            procs = optional(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
            name = nv.nvmlDeviceGetName(h)
            out.append(
                GpuState(
                    index=i,
                    uuid=str(nv.nvmlDeviceGetUUID(h)),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mb=mem.total // 2**20,
                    memory_used_mb=mem.used // 2**20,
                    utilization_pct=float(util.gpu) if util else None,
                    temperature_c=optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
                    power_w=power / 1000.0 if power is not None else None,
                    pids=[p.pid for p in procs],
                )
            )
        return out
