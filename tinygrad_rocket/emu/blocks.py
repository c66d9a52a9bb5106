"""Block execution of the emulated NPU: what a core does on the op-enable entry of a regcmd list.

`execute(core, block_mask, mem)` is the executor tinygrad_rocket.emu.core calls. It
1. checks the op-enable mask (which block combinations complete, which hang);
2. decodes the persistent register file (core.regs: every register keeps its value across tasks, jobs and files)
   into typed descriptions (descs.py), raising HangError / UnsupportedConfig for the combinations the reference lists;
3. plans the write DMA (every destination byte checked against the file's IOVA map), then reads and computes with
   numpy (conv.py: CNA + CORE; dpu.py: DPU + DPU_RDMA);
4. writes the output only after every DMA read of the task succeeded, so an IOMMU fault writes nothing;
5. records the task's counters (cost.py) in `core.job_stats` (the running job's cost.JobStats, set by the kernel
   driver; EmuFile keeps them per job: `EmuFile.job_stats`, and for the file: `EmuFile.stats`).
Semantics and sources: docs/emulator.md; every uncertain choice is a named constant in descs/conv/dpu/layouts/arith.
"""
from __future__ import annotations
import numpy as np
from tinygrad_rocket.regs.blocks import OpEnable, OP_ENABLE_KNOWN
from tinygrad_rocket.emu.core import HangError
from tinygrad_rocket.emu.memory import IovaSpace
from tinygrad_rocket.emu import conv as conv_mod, dpu as dpu_mod, ppu as ppu_mod, layouts
from tinygrad_rocket.emu.cost import TaskStats, conv_cycles, MACS_PER_CYCLE
from tinygrad_rocket.emu.descs import (Fields, UnsupportedConfig, decode_conv, decode_dpu, decode_rdma, erdma_checks,
                                       conv_qd_en, WEIGHT_GROUPS, DW_GROUPS)

__all__ = ["execute", "UnsupportedConfig"]

_CNA, _CORE, _DPU, _RDMA, _PPUS = (int(b) for b in (OpEnable.CNA, OpEnable.CORE, OpEnable.DPU, OpEnable.DPU_RDMA,
                                                     OpEnable.PPU | OpEnable.PPU_RDMA))   # plain ints: IntFlag ops are slow
_KNOWN = int(OP_ENABLE_KNOWN)

def _check_mask(mask:int) -> tuple[bool, bool]:
  """(conv, rdma) for a CNA/CORE/DPU mask the emulator runs; HangError for masks that never raise the DPU interrupt the
  kernel waits for (rocket_hw.md §2.4: only DPU_0/DPU_1 complete a task). PPU masks: see `execute`."""
  if mask & ~_KNOWN: raise UnsupportedConfig(f"op-enable mask {mask:#x} sets reserved bits")
  if mask & _PPUS:
    raise UnsupportedConfig(f"op-enable mask {mask:#x}: the PPU together with other blocks (DPU -> PPU on the fly) is not emulated")
  cna, core_, dpu, rdma = bool(mask & _CNA), bool(mask & _CORE), bool(mask & _DPU), bool(mask & _RDMA)
  if not dpu: raise HangError(f"op-enable mask {mask:#x} does not start the DPU: no DPU interrupt ever completes the task")
  if cna != core_:
    raise HangError(f"op-enable mask {mask:#x} starts {'CNA' if cna else 'CORE'} without {'CORE' if cna else 'CNA'}: "
                    "the convolution pipeline never drains")
  return cna, rdma

def _overlaps(reads:list[tuple], write:tuple) -> bool:
  """Whether any byte of the strided read blocks is also written."""
  wb, wshape, wstrides, winner = write
  if not int(np.prod(wshape)) or not winner: return False
  wend = wb + layouts._extent(wshape, wstrides, winner)
  # reads whose whole extent lies outside the write's extent cannot overlap it (the usual case: other BOs)
  reads = [r for r in reads if r[3] and r[0] < wend and r[0] + layouts._extent(r[1], r[2], r[3]) > wb]
  if not reads: return False
  ws = np.sort(layouts.atom_addresses(wb, wshape, wstrides))
  wlo, whi = int(ws[0]), int(ws[-1]) + winner
  for base, shape, strides, inner in reads:
    if not inner or not int(np.prod(shape, dtype=np.int64) if shape else 1): continue
    rs = layouts.atom_addresses(base, shape, strides)
    if int(rs.max()) + inner <= wlo or int(rs.min()) >= whi: continue
    idx = np.searchsorted(ws, rs + inner, side="left") - 1      # last write run starting before each read run ends
    ok = idx >= 0
    if np.any(ws[idx[ok]] + winner > rs[ok]): return True
  return False

PPU_ONLY = _PPUS

def execute(core, block_mask:int, mem:IovaSpace) -> None:
  if block_mask & PPU_ONLY and not block_mask & ~PPU_ONLY & _KNOWN and not block_mask & ~_KNOWN:
    return _execute_ppu(core, block_mask, mem)
  has_conv, rdma_on = _check_mask(block_mask)
  conv, dpu, rdma, qd_en, pl = _decoded(core.regs, ("conv", has_conv, rdma_on), _decode_conv_task)
  plan = dpu_mod.prepare(dpu, rdma, rdma_on, conv, qd_en, mem, pl)

  stats = TaskStats(kind="dpu" if conv is None else ("depthwise" if conv.depthwise else "conv"),
                    precision=(conv.precision if conv is not None else dpu.proc_prec))
  stats.dma_read["PC"] = core.fetch_bytes
  cres, reads = None, []
  if conv is not None:
    need_S = conv.precision == "int8" and not dpu.od_bypass
    cres = conv_mod.run(conv, mem, _cbuf(core), need_S)
    stats.dma_read["CNA feature"] = cres.feature_bytes
    if cres.weight_bytes: stats.dma_read["CNA weight"] = cres.weight_bytes
    reads += cres.read_ranges
  dpu_mod.compute(plan, dpu, rdma, rdma_on, conv, cres.acc if cres else None, cres.window_sum if cres else None, mem)
  for k, v in plan.read_bytes.items(): stats.dma_read[k] = stats.dma_read.get(k, 0) + v
  reads += plan.read_ranges
  sc = plan.scatter
  if _overlaps(reads, (sc.base, sc.shape, sc.strides, sc.inner)):
    raise UnsupportedConfig("the task writes memory it reads (in place): the hardware corrupts in-place EW accumulation "
                            "(GN k-accumulation.md); other in-place forms are not documented")
  sc.commit_cube(plan.cube)
  stats.dma_write["WDMA"] = sc.nbytes
  _account(stats, conv, dpu)
  _record(core, stats)

def _execute_ppu(core, block_mask:int, mem:IovaSpace) -> None:
  """A PPU-only task (op-enable 0x60, GN's pooling program; rocket's IRQ handler waits for DPU bits, yet GN reports such
  jobs completing on mainline, rocket_fp16_ew_ppu.md §5)."""
  if block_mask != PPU_ONLY:
    if block_mask == OpEnable.PPU_RDMA: raise HangError("PPU_RDMA started without the PPU: nothing drains its reads")
    raise UnsupportedConfig("the PPU fed by anything but PPU_RDMA (DPU on the fly) is not emulated")
  d = _decoded(core.regs, ("ppu",), lambda F, _: ppu_mod.decode_ppu(F))
  res = ppu_mod.run(d, mem, core.cbuf)
  sc = res.scatter
  if _overlaps([res.read_range], (sc.base, sc.shape, sc.strides, sc.inner)):
    raise UnsupportedConfig("the PPU task writes memory it reads (in place): not documented")
  sc.commit(res.atoms)
  stats = TaskStats(kind="ppu", precision="fp16", dma_read={"PC": core.fetch_bytes, "PPU_RDMA": res.read_bytes},
                    dma_write={"PPU WDMA": sc.nbytes})
  stats.compute_cycles = d.out_w * d.out_h * d.kw * d.kh * (d.channels // 8)   # [inf] one atom per window tap per cycle
  _record(core, stats)

def _decode_conv_task(F:Fields, kind:tuple) -> tuple:
  _, has_conv, rdma_on = kind
  conv = decode_conv(F) if has_conv else None
  dpu = decode_dpu(F)
  rdma = decode_rdma(F) if rdma_on else None
  if rdma is not None and not rdma.erdma_disable: erdma_checks(F)
  qd_en = conv_qd_en(F) if conv is not None else 0
  return conv, dpu, rdma, qd_en, dpu_mod.plan(dpu, rdma, rdma_on, conv, qd_en)

# Emulator speed, not semantics: the descriptions decoded from a register file are a function of its contents (and of
# the blocks the mask starts), so they are kept per file (core.RegisterFile.decoded) keyed by the contents and reused
# when a task finds the same registers (every call of a program). A decode that raises is not kept (it raises again).
# The descriptions are frozen; a LUT description refers to the file's own LUT RAM, read when the task computes.
DECODED_ENTRIES = 256

def _decoded(regs, kind:tuple, decode):
  cache = getattr(regs, "decoded", None)
  if cache is None: return decode(Fields(regs), kind)      # a plain dict (tests): no cache
  key = (kind, frozenset(regs.items()))
  if (hit := cache.get(key)) is not None: return hit
  out = decode(Fields(regs), kind)
  if len(cache) >= DECODED_ENTRIES: cache.pop(next(iter(cache)))   # oldest first
  cache[key] = out
  return out

def _cbuf(core) -> dict:
  """The core's CBUF contents that outlive a task (weights, for WEIGHT_REUSE); a core reset clears them."""
  return core.cbuf

def _account(stats:TaskStats, conv, dpu) -> None:
  if conv is None:
    surfaces = layouts.ceil_div(dpu.channels * dpu.out_bytes, 16)
    stats.compute_cycles = dpu.width * dpu.height * max(1, surfaces)
    return
  pixels, taps = conv.out_w * conv.out_h, conv.kw * conv.kh
  kernels = 1 if conv.depthwise else conv.kernels
  cycles = conv_cycles(conv.precision, conv.depthwise, pixels, taps, conv.channels, kernels,
                       WEIGHT_GROUPS[conv.precision], DW_GROUPS.get(conv.precision, 1))
  stats.compute_cycles = cycles
  stats.macs_issued = cycles * MACS_PER_CYCLE[conv.precision]
  out_real = min(dpu.orig_channels, conv.out_c)
  if conv.depthwise: stats.macs_useful = pixels * taps * min(conv.channels_real, out_real)
  else: stats.macs_useful = pixels * taps * conv.channels_real * min(out_real, conv.kernels)

def _record(core, stats:TaskStats) -> None:
  if core.job_stats is not None: core.job_stats.add(stats)
