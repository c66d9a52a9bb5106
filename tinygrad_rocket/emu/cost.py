"""Per-task / per-job counters of the emulated NPU and a first-order cost model (modeled time at a given clock).

Counters (exact, from the registers): tasks; MACs issued (MAC-array slots occupied, i.e. cycles x the array's MACs per
cycle, which counts channel and kernel padding to the array's groups) and MACs useful (real input channels x real
output channels x taps x output pixels); DMA bytes per unit and direction.

Cost model assumptions (every number from ../shared/reference/; the model is a first-order *lower bound*: GN measured
rocket matmuls at ~15% of MAC peak, landscape.md §3.6 "not MAC-bound"):
- MACS_PER_CYCLE per core and precision: TRM chapter 36 (landscape.md §1.1): int8 1024, fp16/bf16/int16 512, tf32 256.
  The array computes one NG x KG tile (kernels x channels, rocket_fp16_ew_ppu.md §1.3: int8 32x32, fp16 16x32, tf32
  16x16) per output pixel and tap per cycle.
- Depthwise [inf, no source]: one channel group (int8 64, fp16 32) per output pixel and tap per cycle.
- DPU-only (flying) tasks [inf, no source]: one 16-byte atom per cycle.
- DMA_BYTES_PER_S: 10.9 GB/s per core, the measured single-core NPU weight-streaming bandwidth (landscape.md §1.3,
  allbilly/qwen3.c ROOFLINE.md, vendor kernel, NPU at 1 GHz). DRAM-side, so independent of the NPU clock.
- Compute and DMA of a task overlap perfectly: task time = max(cycles / clock, bytes / bandwidth).
- Overheads on stock mainline rocket (rocket_fp16_ew_ppu.md §6.E, GN measurements; landscape.md §2.1: one IRQ
  round-trip per task): PER_JOB_OVERHEAD_S = 54 us (median per-submit floor, IOMMU attach/detach and the first IRQ),
  PER_TASK_OVERHEAD_S = 29 us (IRQ on an A76 and the kernel kicking the next task, 27-31 us) for every further task.
- Clock: DEFAULT_CLOCK_HZ 1 GHz (TRM maximum, landscape.md §1.2); stock mainline boards run at MAINLINE_CLOCK_HZ 200 MHz.
"""
from __future__ import annotations
from dataclasses import dataclass, field

MACS_PER_CYCLE = {"int8": 1024, "int16": 512, "fp16": 512, "bf16": 512, "tf32": 256, "int4": 2048}
DMA_BYTES_PER_S = 10.9e9
PER_JOB_OVERHEAD_S = 54e-6
PER_TASK_OVERHEAD_S = 29e-6
DEFAULT_CLOCK_HZ = 1_000_000_000
MAINLINE_CLOCK_HZ = 200_000_000

@dataclass
class TaskStats:
  kind: str                                   # "conv", "depthwise", "dpu" (flying), ...
  precision: str
  compute_cycles: int = 0
  macs_issued: int = 0
  macs_useful: int = 0
  dma_read: dict[str, int] = field(default_factory=dict)    # unit -> bytes (PC, CNA feature, CNA weight, BRDMA, ...)
  dma_write: dict[str, int] = field(default_factory=dict)   # unit -> bytes (WDMA)

  @property
  def bytes_read(self) -> int: return sum(self.dma_read.values())
  @property
  def bytes_written(self) -> int: return sum(self.dma_write.values())
  def busy_seconds(self, clock_hz:float=DEFAULT_CLOCK_HZ) -> float:
    return max(self.compute_cycles / clock_hz, (self.bytes_read + self.bytes_written) / DMA_BYTES_PER_S)
  def modeled_cycles(self, clock_hz:float=DEFAULT_CLOCK_HZ) -> int:
    """NPU cycles the task keeps the core busy (DMA-bound tasks count the cycles their transfers take)."""
    return int(round(self.busy_seconds(clock_hz) * clock_hz))

@dataclass
class JobStats:
  """Counters of one job (or of any set of tasks: `merge`)."""
  tasks: list[TaskStats] = field(default_factory=list)
  jobs: int = 1

  def add(self, t:TaskStats) -> None: self.tasks.append(t)
  def merge(self, other:JobStats) -> None:
    self.tasks.extend(other.tasks)
    self.jobs += other.jobs
  @property
  def task_count(self) -> int: return len(self.tasks)
  @property
  def macs_issued(self) -> int: return sum(t.macs_issued for t in self.tasks)
  @property
  def macs_useful(self) -> int: return sum(t.macs_useful for t in self.tasks)
  @property
  def compute_cycles(self) -> int: return sum(t.compute_cycles for t in self.tasks)
  def dma_read(self) -> dict[str, int]: return _sum_dicts(t.dma_read for t in self.tasks)
  def dma_write(self) -> dict[str, int]: return _sum_dicts(t.dma_write for t in self.tasks)
  @property
  def bytes_read(self) -> int: return sum(t.bytes_read for t in self.tasks)
  @property
  def bytes_written(self) -> int: return sum(t.bytes_written for t in self.tasks)
  def modeled_cycles(self, clock_hz:float=DEFAULT_CLOCK_HZ) -> int:
    return sum(t.modeled_cycles(clock_hz) for t in self.tasks)
  def modeled_seconds(self, clock_hz:float=DEFAULT_CLOCK_HZ, overheads:bool=True) -> float:
    busy = sum(t.busy_seconds(clock_hz) for t in self.tasks)
    if not overheads or not self.tasks: return busy
    return busy + self.jobs * PER_JOB_OVERHEAD_S + max(0, len(self.tasks) - self.jobs) * PER_TASK_OVERHEAD_S
  def summary(self, clock_hz:float=DEFAULT_CLOCK_HZ) -> dict:
    return dict(jobs=self.jobs, tasks=self.task_count, macs_issued=self.macs_issued, macs_useful=self.macs_useful,
                dma_read=self.dma_read(), dma_write=self.dma_write(), compute_cycles=self.compute_cycles,
                modeled_cycles=self.modeled_cycles(clock_hz), modeled_seconds=self.modeled_seconds(clock_hz), clock_hz=clock_hz)

def _sum_dicts(ds) -> dict[str, int]:
  out: dict[str, int] = {}
  for d in ds:
    for k, v in d.items(): out[k] = out.get(k, 0) + v
  return out

def conv_cycles(precision:str, depthwise:bool, out_pixels:int, taps:int, channels:int, kernels:int,
                groups:tuple[int, int], dw_group:int) -> int:
  ng, kg = groups
  if depthwise: return out_pixels * taps * -(-channels // dw_group)
  return out_pixels * taps * -(-channels // kg) * -(-kernels // ng)
