"""Hosts indexed for placement's best fit, per GPU memory floor (0 for plain jobs): no look at
every host for each job (with 1,000 hosts that look cost 100-300 ms a pass).

For one floor, each host is filed under (usable GPUs, usable GPUs that meet the floor), each
such bucket a heap of (running jobs, host). The best fit for N GPUs is placement's: the host
left with the fewest usable GPUs (all of them counted, as `_Pool.best_any` counts), then the
least loaded, then by name; so the buckets are read by usable count upwards, and within one
count every bucket with at least N GPUs that meet the floor. Entries go stale as hosts move
(`refile` adds a fresh one); a stale one is dropped when it comes to the top.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from typing import Protocol


class _Host(Protocol):
    gpu_memory_mb: dict[int, int]
    running: int


class FloorIndex:
    def __init__(self, floor_mb: float, usable: Mapping[str, list[int]], hosts: Mapping[str, _Host]) -> None:
        self.floor_mb = floor_mb
        self.usable = usable
        self.hosts = hosts
        self.filed: dict[str, tuple[int, int]] = {}
        self.heaps: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
        for host in hosts:
            self.refile(host)

    def _key(self, host: str) -> tuple[int, int]:
        memory = self.hosts[host].gpu_memory_mb
        usable = self.usable[host]
        return len(usable), sum(1 for g in usable if memory[g] >= self.floor_mb)

    def refile(self, host: str) -> None:
        """After `host` moved (GPUs taken or held, a job placed)."""
        key = self._key(host)
        self.filed[host] = key
        heapq.heappush(self.heaps[key], (self.hosts[host].running, host))

    def _top(self, key: tuple[int, int]) -> tuple[int, str] | None:
        heap = self.heaps.get(key)
        while heap:
            running, host = heap[0]
            if self.filed[host] == key and self.hosts[host].running == running:
                return heap[0]
            heapq.heappop(heap)
        return None

    def best(self, gpus: int, most: int) -> str | None:
        """The best-fit host with at least `gpus` usable GPUs that meet the floor, or None."""
        for total in range(gpus, most + 1):
            tops = [top for meeting in range(gpus, total + 1) if (top := self._top((total, meeting)))]
            if tops:
                return min(tops)[1]
        return None
