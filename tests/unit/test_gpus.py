"""GPU discovery. The NVML mapping is checked against a stand-in `pynvml` (these machines have no
GPU; the stand-in is explicit and only used here); the no-driver path runs for real."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.gpus import GpuInventory, parse_simulation


class FakeNvml:
    """Stand-in for the pynvml module: two boards, the second without a power sensor."""

    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=40 + h)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise RuntimeError("not supported")
        return 250_000

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=4242)] if h == 0 else []

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:04d}"

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 60 + h


def test_nvml_readings_become_gpu_states() -> None:
    inv = GpuInventory("h", "")
    inv._nvml = FakeNvml()
    gpus = inv.snapshot()
    assert [(g.index, g.uuid, g.name, g.memory_total_mb, g.memory_used_mb) for g in gpus] == [
        (0, "GPU-0000", "NVIDIA H100 80GB HBM3", 81920, 1024),
        (1, "GPU-0001", "NVIDIA H100 80GB HBM3", 81920, 2048),
    ]
    assert (gpus[0].utilization_pct, gpus[0].temperature_c, gpus[0].power_w, gpus[0].pids) == (40.0, 60, 250.0, [4242])
    assert gpus[1].power_w is None and gpus[1].pids == []
    assert not any(g.simulated for g in gpus)


def test_without_a_driver_there_are_no_gpus_and_a_note_says_why() -> None:
    inv = GpuInventory("h", "")
    if inv._nvml is not None:
        pytest.skip("this machine has an NVIDIA driver")
    assert inv.snapshot() == [] and inv.note.startswith("no NVIDIA driver available")


def test_simulated_gpus_are_marked_and_report_their_pids() -> None:
    inv = GpuInventory("h", "2x40GB")
    gpus = inv.snapshot({1: [99]})
    assert [(g.index, g.memory_total_mb, g.simulated, g.pids) for g in gpus] == [
        (0, 40960, True, []),
        (1, 40960, True, [99]),
    ]
    assert parse_simulation("3x512MB") == [(0, 512), (1, 512), (2, 512)]
    with pytest.raises(ValueError, match="COUNTxMEMORY"):
        parse_simulation("lots")
