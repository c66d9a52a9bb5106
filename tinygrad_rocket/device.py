"""The ROCKET device: BO-backed buffers, and programs that run either on the NPU or as tinygrad's C code in place.

tinygrad finds this class as `tinygrad.runtime.ops_rocket.RocketDevice` (see __init__.py for the module alias).
"""
from __future__ import annotations
import copy
import sys, ctypes, platform, time, itertools
from dataclasses import dataclass
import numpy as np
from tinygrad_rocket._tg import Compiled, LRUAllocator, BufferSpec, TinyELF, ClangRenderer, CPUProgram, to_mv, install_to_program_hook
from tinygrad_rocket.ioctl import RocketDriver, BufferObject, Job, JobFailedError, open_device
from tinygrad_rocket.blob import parse_blob
from tinygrad_rocket.program import NpuProgram, SCRATCH, eval_pexpr
from tinygrad_rocket import lower, config, report

# ***** buffers *****

_versions = itertools.count(1)  # process-wide, so a (BO, version) pair names one content even if a BO object is recycled

@dataclass(eq=False)
class BoDomain:
  """Who may touch a BO's memory right now. The CPU mapping is cached (rocket_hw.md §1.4): CPU access starts with
  PREP_BO (which also waits for the NPU jobs writing it) and device access starts with FINI_BO. Tracking the domain
  makes a run of CPU kernels, or of NPU jobs, pay for the sync once."""
  bo: BufferObject|None       # None: host memory tinygrad gave us (Tensor.from_blob); CPU-only
  cpu_owned: bool = False
  version: int = 0            # renewed on every write: a packed copy of the BO's data is valid for one version

  def written(self) -> None: self.version = next(_versions)

@dataclass(eq=False)
class RocketBuffer:
  va_addr: int                # CPU address (tinygrad's CPU programs read `va_addr`)
  size: int
  domain: BoDomain
  offset: int = 0             # byte offset into the BO

  @property
  def dma_addr(self) -> int:
    if self.domain.bo is None: raise RuntimeError("host (from_blob) buffer has no NPU address")
    return self.domain.bo.dma_address + self.offset

class RocketAllocator(LRUAllocator['RocketDevice']):
  def __init__(self, dev:RocketDevice): super().__init__(dev, supports_copy_from_disk=False, supports_transfer=False)

  def _alloc(self, size:int, options:BufferSpec) -> RocketBuffer:
    if options.external_ptr is not None: return RocketBuffer(options.external_ptr, size, BoDomain(None, cpu_owned=True))
    bo = self.dev.driver.create_bo(size)
    return RocketBuffer(bo.va_addr, size, BoDomain(bo))
  def _free(self, buf:RocketBuffer, options:BufferSpec):
    if buf.domain.bo is not None: self.dev.driver.close_bo(buf.domain.bo)
  def _offset(self, buf:RocketBuffer, size:int, offset:int) -> RocketBuffer:
    return RocketBuffer(buf.va_addr + offset, size, buf.domain, buf.offset + offset)

  # tinygrad copies CPU->ROCKET straight into _as_buffer's view (bypassing _copyin), so every CPU path takes the BO first
  def _as_buffer(self, buf:RocketBuffer) -> memoryview:
    self.dev.to_cpu(buf)
    buf.domain.written()  # the caller may write through the view
    return to_mv(buf.va_addr, buf.size)
  def _copyin(self, dest:RocketBuffer, src:memoryview):
    self.dev.to_cpu(dest)
    dest.domain.written()
    ctypes.memmove(dest.va_addr, (ctypes.c_char * len(src)).from_buffer(src) if not src.readonly else bytes(src), len(src))
  def _copyout(self, dest:memoryview, src:RocketBuffer):
    self.dev.to_cpu(src)
    ctypes.memmove((ctypes.c_char * len(dest)).from_buffer(dest), src.va_addr, len(dest))

# ***** programs *****

class RocketRenderer(ClangRenderer):
  """tinygrad's C renderer (fallback kernels are plain C run in place on the BOs); NPU kernels are picked out before
  rendering by the to_program hook installed below."""
  has_local = False    # no GPU-style local groups
  has_threads = False  # one CPU thread per fallback kernel: no core_id parameter to fill in

  precision = "default"

class RocketFP32Renderer(RocketRenderer):
  """ROCKET_PRECISION=fp32 (or DEV=ROCKET:FP32): float32 kernels must give float32-accurate results."""
  precision = "fp32"

install_to_program_hook(lambda renderer: isinstance(renderer, RocketRenderer), lower.to_program)

class FallbackProgram(CPUProgram):
  """A kernel no NPU rule takes: tinygrad's C code, run by the CPU on the BO memory in place."""
  def __init__(self, dev:RocketDevice, obj:TinyELF, reason:str):
    super().__init__(dev, obj)  # type: ignore[arg-type]  # CPUProgram only stores the device
    self.rdev, self.reason = dev, reason

  def __call__(self, *bufs:RocketBuffer, global_size=(1,1,1), local_size=(1,1,1), vals=(), wait=False, **kw) -> float|None:
    report.kernel_ran(self.name, "fallback", self.reason)
    if not config.fallback_allowed(): raise config.FallbackError(self.name, self.reason)
    for b in bufs:
      self.rdev.to_cpu(b)
      b.domain.written()  # which parameters a C kernel writes is not in its binary: count them all as written
    return super().__call__(*bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait)

class NpuJobError(RuntimeError):
  """An NPU job of a kernel failed on the device (timeout/hang, IOMMU fault, ...)."""

# The NPU sees only finite fp16 operands: then its fp32 sums are finite too (65504^2 times any K tinygrad hands over
# stays far below fp32's range), and NaN/inf semantics (tinygrad's MAX(0, NaN) is 0, the NPU's ReLU of NaN is not
# documented) never arise on it. A call with a non-finite operand takes the kernel's C code.
NONFINITE_OPERAND_REASON = "an operand is not finite in fp16 for this call (|x| > 65504, inf or NaN)"

GUARD_REASON = "a lookup table's argument lies outside the table's domain for this call"

class NpuRunner:
  """Runs an NpuProgram: pack operands (CPU), one SUBMIT with all its tasks, unpack results (CPU). A call whose
  operands the NPU cannot represent runs the kernel's C code instead (`other_path`), as a reported fallback."""
  def __init__(self, dev:RocketDevice, prg:NpuProgram, other_path:FallbackProgram):
    self.dev, self.prg, self.name, self.other_path = dev, prg, prg.name, other_path
    self.scratch = [dev.allocator._alloc(sz, BufferSpec()) for sz in prg.scratch]
    self.regcmd = dev.allocator._alloc(prg.tasks.nbytes, BufferSpec())
    dev.to_cpu(self.regcmd)
    self.words = np.frombuffer(to_mv(self.regcmd.va_addr, prg.tasks.nbytes), np.uint64)
    self.words[:] = prg.tasks.words
    # gather indices computed once per program; packs grouped by destination, in order (a later copy may write over
    # an earlier one's fill, so a group is redone whole when any of its sources changed)
    self.pack: dict[int, list] = {}
    for c in prg.pack: self.pack.setdefault(c.dst, []).append((c, *c.indices()))
    self.unpack = [(c, *c.indices()) for c in prg.unpack]
    written = set(prg.written_scratch())
    read = set(self.pack)
    assert not written & read, f"{prg.name}: a scratch BO is both read and written by the job"
    self.out_handles = [self.scratch[s - SCRATCH].domain.bo.handle for s in sorted(written)]
    self.in_handles = [self.regcmd.domain.bo.handle] + [self.scratch[s - SCRATCH].domain.bo.handle for s in sorted(read)]
    # destination -> (source version, offset)s it was last packed from: operands whose buffers were not written since
    # (weights, above all) are not packed again (DESIGN.md, Weights)
    self.packed_from: dict[int, tuple] = {}

  def _array(self, buf:RocketBuffer, dtype:str) -> np.ndarray:
    return np.frombuffer(to_mv(buf.va_addr, buf.size), dtype)

  def _copy(self, c, src_idx, dst_idx, valid, lin, slot:dict[int, RocketBuffer], operand:bool) -> bool:
    """Performs one Copy. For an operand (packing), False and nothing written if a value is not finite in the NPU's
    format (see NONFINITE_OPERAND_REASON); a result overflowing a narrower output dtype is IEEE's inf, as on the CPU."""
    dst = slot[c.dst]
    self.dev.to_cpu(dst)
    def load(s:int, dtype:str, index) -> np.ndarray:
      self.dev.to_cpu(slot[s])
      return self._array(slot[s], dtype)[lin(index)].astype(np.float64)
    slope = lambda e: eval_pexpr(e, load, 1.0) - eval_pexpr(e, load, 0.0)
    if c.value is not None and (c.value[0] == "intercept" or c.src is None):  # a computed value: no source is read
      raw = np.broadcast_to(eval_pexpr(c.value[1], load, 0.0) if c.value[0] == "intercept" else slope(c.value[1]), dst_idx.shape).astype(np.float64)
    elif c.src is None: raw = np.full(len(dst_idx), c.fill, np.float64)
    else:
      self.dev.to_cpu(slot[c.src])
      raw = self._array(slot[c.src], c.src_dtype)[src_idx]
      if c.value is not None: raw = raw * slope(c.value[1])  # ("slope", e): scaled before the rounding to the NPU's format
    if valid is not None: raw[~valid] = c.fill
    with np.errstate(over="ignore"): vals = raw.astype(c.dst_dtype)
    if operand and vals.dtype.kind == "f" and not np.isfinite(vals).all(): return False
    self._array(dst, c.dst_dtype)[dst_idx] = vals
    dst.domain.written()
    return True

  def __call__(self, *bufs:RocketBuffer, global_size=(1,1,1), local_size=(1,1,1), vals=(), wait=False, **kw) -> float|None:
    st = time.perf_counter()
    slot = dict(zip(self.prg.globals or range(len(bufs)), bufs)) | {SCRATCH + i: s for i, s in enumerate(self.scratch)}
    for dst, group in self.pack.items():
      srcs = [slot[s] for c, *_ in group for s in ((c.src,) if c.src is not None else ()) + c.params]
      key = tuple((b.domain.version, b.offset) for b in srcs)
      if all(b.domain.bo is not None for b in srcs) and self.packed_from.get(dst) == key: continue
      for c, si, di, valid, lin in group:
        if not self._copy(c, si, di, valid, lin, slot, operand=True):
          self.packed_from.clear()
          return self.other_path(*bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, **kw)
      self.packed_from[dst] = key
    for g in self.prg.guards:   # a lookup table's argument outside its domain: the table's bound would not hold
      mem = self.scratch[g.slot - SCRATCH]
      self.dev.to_cpu(mem)
      if not g.holds(np.frombuffer(to_mv(mem.va_addr, mem.size), np.uint8)):
        guard_path = copy.copy(self.other_path)
        guard_path.reason = f"{GUARD_REASON}: {g.what}"
        return guard_path(*bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, **kw)
    report.kernel_ran(self.name, "npu", self.prg.summary)
    self.dev.to_cpu(self.regcmd)
    # tasks address only the program's scratch BOs (program.py); kernel buffers may be host memory (from_blob)
    self.prg.tasks.bind({s: b.dma_addr for s, b in slot.items() if s >= SCRATCH}, self.regcmd.dma_addr, out=self.words)
    for b in (*self.scratch, self.regcmd): self.dev.to_device(b)
    self.dev.driver.submit([Job(self.prg.tasks.task_addresses(self.regcmd.dma_addr), self.in_handles, self.out_handles)])
    try:
      for c, si, di, valid, lin in self.unpack: self._copy(c, si, di, valid, lin, slot, operand=False)
    except JobFailedError as e: raise NpuJobError(f"NPU job of kernel {self.name} failed: {e}") from e
    return time.perf_counter() - st if wait else None

# ***** device *****

_notice_printed = False

class RocketDevice(Compiled):
  def __init__(self, device:str):
    global _notice_printed
    file, self.backend_note = open_device()
    self.driver, self.emulated = RocketDriver(file), type(file).__module__.startswith("tinygrad_rocket.emu")
    if self.emulated and not _notice_printed:
      print(f"ROCKET: running on the NPU emulator ({self.backend_note})", file=sys.stderr)
      _notice_printed = True
    arch = {'amd64':'x86_64', 'aarch64':'arm64'}.get(m:=platform.machine().lower(), m) + ",native"  # ClangCompiler wants "<arch>,<cpu>"
    renderers = [RocketFP32Renderer, RocketRenderer] if config.precision() == "fp32" else [RocketRenderer, RocketFP32Renderer]
    super().__init__(device, RocketAllocator(self), renderers, None, arch=arch)

  def runtime(self, obj:TinyELF):
    blob = parse_blob(obj.lib)
    c_code = TinyELF(blob.elf, obj.name, obj.target, obj.signature, obj.profile_key)
    if blob.kind == "fallback": return FallbackProgram(self, c_code, blob.reason)
    return NpuRunner(self, NpuProgram.from_bytes(blob.payload), FallbackProgram(self, c_code, NONFINITE_OPERAND_REASON))

  def to_cpu(self, buf:RocketBuffer) -> None:
    """Make the buffer's BO safe for CPU access: waits for the NPU jobs writing it and syncs the CPU cache."""
    if not (d:=buf.domain).cpu_owned:
      self.driver.prep_bo(d.bo.handle)
      d.cpu_owned = True

  def to_device(self, buf:RocketBuffer) -> None:
    """Hand the buffer's BO to the NPU: flushes CPU writes."""
    if (d:=buf.domain).bo is None: raise RuntimeError("host (from_blob) buffers cannot be used by NPU programs; copy them first")
    if d.cpu_owned:
      self.driver.fini_bo(d.bo.handle)
      d.cpu_owned = False

  def synchronize(self): pass  # every CPU access waits for its BO's writers (to_cpu); TODO(issue 4): wait for in-flight jobs
  def finalize(self): pass
