"""The ROCKET device: BO-backed buffers, and programs that run either on the NPU or as tinygrad's C code in place.

tinygrad finds this class as `tinygrad.runtime.ops_rocket.RocketDevice` (see __init__.py for the module alias).
"""
from __future__ import annotations
import sys, copy, ctypes, platform, time, itertools
from dataclasses import dataclass, field, replace
import numpy as np
from tinygrad_rocket._tg import Compiled, LRUAllocator, BufferSpec, TinyELF, ClangRenderer, CPUProgram, to_mv, install_to_program_hook, TRAINING
from tinygrad_rocket.ioctl import RocketDriver, BufferObject, Job, JobFailedError, open_device
from tinygrad_rocket.blob import parse_blob
from tinygrad_rocket.program import NpuProgram, Guard, SCRATCH, eval_pexpr
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
  # NPU results not yet in the plain (row-major) memory, oldest first: the BO's plain bytes are stale where they write.
  # They are unpacked by the first CPU access (RocketDevice.to_cpu); an NPU program may read them natively instead.
  pending: list[PendingUnpack] = field(default_factory=list)

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
  def free(self, opaque:RocketBuffer, size:int, options:BufferSpec|None=None):
    self.dev.layout_stats.dropped += len(opaque.domain.pending)
    opaque.domain.pending.clear()  # nobody can read a freed buffer: its NPU results are never unpacked
    super().free(opaque, size, options)
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
# documented) never arise on it. A call with a non-finite operand takes the kernel's C code, except an infinity its
# Copy allows (program.Copy.exact_inf: -inf operands of the PPU's max, rules/pool.py MAX_IDENTITY) or replaces by a
# finite stand-in (program.Copy.neg_inf: a -inf argument of exp's table, rules/elementwise.py NEG_INF_ARG).
NONFINITE_OPERAND_REASON = "an operand is not finite in fp16 for this call (|x| > 65504, inf or NaN)"
# rules/elementwise.py COMPARE_F32: a float32 operand compared with an fp16 constant k must not round onto k
DISTINCT_REASON = ("a float32 operand compared with a constant rounds to it in fp16 for this call (the NPU would find them "
                   "equal)")
GUARD_REASON = ("a check of this call's operands before the job fails (a lookup table's argument outside the table's domain, "
                "or a narrowed stage result fp16 cannot hold)")
AFTER_GUARD_REASON = "a value the NPU computed for this call fails a check (the job's results are discarded)"

# An NpuRunner keeps up to MAX_BANKS sets of the BOs its jobs write (result cubes, and the regcmd list bound to the
# call's buffers): a result stays NPU-native in its bank until a CPU access needs it, so a bank is reused once nothing
# awaits its results (else the least recently used one is unpacked first). One program may run several layers of the
# same shape in a row (ResNet's repeated blocks), each of whose results the next one reads.
MAX_BANKS = 4
# Packed operands kept resident per scratch slot, by source versions (DESIGN.md, Weights): the same program run with
# several weight tensors (repeated layers) packs each once.
MAX_RESIDENT = 4
# On the emulator a job computes on this machine's CPU: the runner waits for it right after submitting (measured: letting
# tinygrad's Python run next to the emulating thread only makes both contend for the GIL and the cores). Results still
# stay NPU-native until read; on a board jobs run asynchronously.
WAIT_EMULATED_JOBS = True
_serials = itertools.count()  # names a runner or bank in caches (an id() could be reused)

@dataclass
class LayoutStats:
  """What the layout coherence did, counted per Copy: how a test sees that chained NPU programs skip the CPU."""
  packed: int = 0         # operand gathers from plain memory
  packed_native: int = 0  # operand gathers from another NPU job's result cube (no unpack, no plain read)
  pack_skipped: int = 0   # operand groups still resident from an earlier call (same source versions)
  unpacked: int = 0       # result unpacks into plain memory (a CPU access needed them)
  dropped: int = 0        # results never unpacked (their buffer was freed first)

@dataclass(eq=False)
class Native:
  """Where a job's result for one kernel buffer lives: plain element e (of `base`) is element index[e] of the cube in
  `scratch` (-1: the job does not write e). `key` names the index map."""
  key: tuple
  scratch: RocketBuffer
  dtype: str              # the cube's element dtype
  plain_dtype: str        # the buffer's element dtype (what unpacking converts to)
  base: RocketBuffer
  index: np.ndarray

@dataclass(eq=False)
class PendingUnpack:
  """Results of one NPU job for one buffer, still only in the job's scratch cube: `copies` (with `slot` binding their
  source scratch and the destination buffer) write them into the buffer's plain memory."""
  runner: NpuRunner
  copies: list[tuple]     # (Copy, src indices, dst indices, valid, lin), as NpuRunner prepares them
  slot: dict[int, RocketBuffer]
  native: Native|None     # how an NPU program may read the results from the cube instead (None: it may not)
  bank: Bank
  fills: tuple = ()       # (dst indices, values, dtype) an output select writes after the results (NpuProgram.fills)
  keep: list[np.ndarray]|None = None   # per copy, the points unpacked from this job (None: all; others come from other jobs)

  @property
  def writes(self) -> tuple:
    """Names the plain elements the unpack writes (equal: the same elements)."""
    return (self.runner.serial, tuple((k, b.offset) for k, b in self.slot.items() if k < SCRATCH))
  def live(self, dom:BoDomain) -> bool: return any(q is self for q in dom.pending)
  def apply(self) -> None:
    r = self.runner
    try:
      for i, (c, si, di, valid, lin) in enumerate(self.copies):
        r._copy(c, si, di, valid, lin, self.slot, operand=False, renew=False, keep=None if self.keep is None else self.keep[i])
      for di, vals, dtype in self.fills: r._array(self.slot[self.copies[0][0].dst], dtype)[di] = vals
    except JobFailedError as e:
      self.bank.busy = False  # reported here, once
      raise NpuJobError(f"NPU job of kernel {r.name} failed: {e}") from e
    r.dev.layout_stats.unpacked += len(self.copies)

class Bank:
  """One set of the BOs a job writes (result cubes) or fetches (its regcmd list), and the results still pending in it."""
  def __init__(self, dev:RocketDevice, prg:NpuProgram, written:list[int]):
    self.scratch = {s: dev.allocator._alloc(prg.scratch[s - SCRATCH], BufferSpec()) for s in written}
    self.regcmd = dev.allocator._alloc(prg.tasks.nbytes, BufferSpec())
    dev.to_cpu(self.regcmd)
    self.words = np.frombuffer(to_mv(self.regcmd.va_addr, prg.tasks.nbytes), np.uint64)
    self.words[:] = prg.tasks.words
    self.out_handles = [b.domain.bo.handle for b in self.scratch.values()]
    self.bound: tuple|None = None                       # the buffers' IOVAs the list was last bound to
    self.pending: list[tuple[BoDomain, PendingUnpack]] = []
    self.busy = False                                   # its last job was submitted and not yet waited for
    self.used = 0                                       # call number of its last use

  def free(self) -> bool: return not any(p.live(dom) for dom, p in self.pending)

@dataclass(eq=False)
class Resident:
  """A packed operand: scratch `buf` holds the pack of sources at `key` (their (version, offset)s; None: nothing valid)."""
  buf: RocketBuffer
  key: tuple|None = None
  used: int = 0

FP16_EXPONENT = 0x7C00  # all ones: inf or NaN

Strided = tuple[int, tuple[int, ...], tuple[int, ...]]   # (first element, shape, strides in elements), outer to inner

def strided_form(idx:np.ndarray) -> Strided|None:
  """idx (flat element indices) as a strided block, if it is one: idx == first + sum(coord_k * strides_k) over the
  shape in row-major order. Peeled from the innermost run outwards, each level checked exactly."""
  if not len(idx): return None
  shape: list[int] = []
  strides: list[int] = []
  rest = idx.astype(np.int64, copy=False)
  while len(rest) > 1:
    step = int(rest[1] - rest[0])
    breaks = np.flatnonzero(np.diff(rest) != step)
    run = len(rest) if not len(breaks) else int(breaks[0]) + 1
    if len(rest) % run: return None
    rows = rest.reshape(-1, run)
    if not np.array_equal(rows - rows[:, :1], np.broadcast_to(np.arange(run, dtype=np.int64) * step, rows.shape)): return None
    shape.insert(0, run); strides.insert(0, step)
    rest = rows[:, 0]
  return int(rest[0]), tuple(shape), tuple(strides)

def common_form(a:Strided, b:Strided) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]|None:
  """(shape, a's strides, b's strides) of one shape both strided blocks of the same element count fit, splitting
  dimensions where one block's dimension is a multiple of the other's; None if they do not nest."""
  A, B = list(zip(a[1], a[2])), list(zip(b[1], b[2]))
  shape: list[int] = []
  sa: list[int] = []
  sb: list[int] = []
  while A and B:
    (la, xa), (lb, xb) = A.pop(), B.pop()   # innermost dimensions
    n = min(la, lb)
    if max(la, lb) % n: return None
    if la > n: A.append((la // n, xa * n))
    if lb > n: B.append((lb // n, xb * n))
    shape.insert(0, n); sa.insert(0, xa); sb.insert(0, xb)
  if A or B: return None
  return tuple(shape), tuple(sa), tuple(sb)

def _finite(vals:np.ndarray) -> bool:
  """Whether every value is finite (fp16 by its exponent bits: numpy's float16 arithmetic is slow)."""
  if vals.dtype == np.float16: return not ((vals.view(np.uint16) & FP16_EXPONENT) == FP16_EXPONENT).any()
  return bool(np.isfinite(vals).all())

def _exact_inf_only(raw:np.ndarray, vals:np.ndarray, inf:float|None) -> bool:
  """Whether every non-finite packed value is the operand's allowed infinity (Copy.exact_inf) and comes from that
  infinity in the source (a finite value overflowing fp16 to it is not exact). +inf/NaN operands still take the C code."""
  if inf is None: return False
  return bool((raw[~np.isfinite(vals)] == inf).all())

class NpuRunner:
  """Runs an NpuProgram: packs operands (on the CPU, from plain memory or from the result cube of the NPU job that wrote
  them; operands whose sources did not change stay packed), one SUBMIT with all its tasks, and leaves the results in
  the job's cube until a CPU access needs them in plain memory (DESIGN.md, NPU layout coherence). A call whose operands
  the NPU cannot represent runs the kernel's C code instead (`other_path`), as a reported fallback; one that fails a
  guard runs the program's next alternative (another window of its tables), the C code after the last one."""
  def __init__(self, dev:RocketDevice, prg:NpuProgram, other_path:FallbackProgram, depth:int=0):
    self.dev, self.prg, self.name, self.other_path, self.depth = dev, prg, prg.name, other_path, depth   # depth: alternatives before it
    assert prg.elements or all(g.first is None for g in prg.guards), f"{prg.name}: a guard of elements the program does not number"
    self.guard_paths: dict[str, FallbackProgram] = {}
    self.next: NpuRunner|None = None   # the runner of prg.alternatives[0], when a call first needs it
    self.before, self.after = [g for g in prg.guards if not g.after], [g for g in prg.guards if g.after]
    self.serial = next(_serials)
    # gather indices computed once per program; packs grouped by destination, in order (a later copy may write over
    # an earlier one's fill, so a group is redone whole when any of its sources changed)
    self.pack: dict[int, list] = {}
    for c in prg.pack: self.pack.setdefault(c.dst, []).append((c, *c.indices()))
    self.unpack: dict[int, list] = {}                   # kernel buffer slot -> the copies writing its results
    for c in prg.unpack: self.unpack.setdefault(c.dst, []).append((c, *c.indices()))
    self.inverse = {k: self._inverse(copies) for k, copies in self.unpack.items()}
    # an output select's fills: its other value, computed from the kernel's buffers at each call (they may change before
    # the results are unpacked) and written after them; the cube does not hold those elements (a mask's: any it may select)
    self.fills: dict[int, list] = {}
    for c in prg.fills:
      assert c.dst in self.unpack and c.src is None and c.fill is None and c.value is not None and c.value[0] == "intercept", c
      self.fills.setdefault(c.dst, []).append(entry := (c, *c.indices()))
      if (inv := self.inverse[c.dst]) is not None: inv[3][entry[2][entry[2] < len(inv[3])]] = -1
    self.written = sorted(set(prg.written_scratch()))
    assert not set(self.written) & set(self.pack), f"{prg.name}: a scratch BO is both read and written by the job"
    self.resident: dict[int, list[Resident]] = {s: [] for s in self.pack}
    self.banks: list[Bank] = []
    self.calls = 0
    self.composed: dict[tuple, np.ndarray|None] = {}    # (pack Copy, Native.key, element offset) -> cube indices
    self.unpack_elements: dict[int, list[np.ndarray]] = {}   # see _elements
    self.results: np.ndarray|None = None                      # see _results
    self.index_forms: dict[tuple, tuple] = {}           # see _where

  @staticmethod
  def _inverse(copies:list) -> tuple[int, str, str, np.ndarray]|None:
    """(cube slot, cube dtype, plain dtype, plain element -> cube element) of the results for kernel buffer k, or None
    if its unpack is not a plain permutation of one cube (computed values, fills)."""
    cs = [c for c, *_ in copies]
    if any(c.value is not None or c.src is None or c.src < SCRATCH for c in cs) or \
       len({(c.src, c.src_dtype, c.dst_dtype) for c in cs}) != 1 or any(valid is not None for _, _, _, valid, _ in copies): return None
    index = np.full(max(int(di.max()) + 1 if len(di) else 0 for _, _, di, _, _ in copies), -1, np.int64)
    for _, si, di, _, _ in copies: index[di] = si
    return cs[0].src, cs[0].src_dtype, cs[0].dst_dtype, index

  def _array(self, buf:RocketBuffer, dtype:str) -> np.ndarray:
    return np.frombuffer(to_mv(buf.va_addr, buf.size), dtype)

  def _wait(self, bank:Bank, failure_ok:bool) -> None:
    """Waits for the bank's last job."""
    if not bank.busy: return
    bank.busy = False
    try: self.dev.to_cpu(next(iter(bank.scratch.values())))
    except JobFailedError as e:
      if not failure_ok: raise NpuJobError(f"NPU job of kernel {self.name} failed: {e}") from e

  def wait_all(self, failure_ok:bool=False) -> None:
    for b in self.banks: self._wait(b, failure_ok)

  def _bank(self) -> Bank:
    """A bank for the next job: one no buffer awaits results from, a new one, or the least recently used one with its
    pending results unpacked first."""
    if (bank := next((b for b in self.banks if b.free()), None)) is None:
      if len(self.banks) < MAX_BANKS: self.banks.append(bank := Bank(self.dev, self.prg, self.written))
      else:
        bank = min(self.banks, key=lambda b: b.used)
        for dom, p in bank.pending:
          if p.live(dom): self.dev.flush(dom)
    bank.pending.clear()
    self._wait(bank, failure_ok=True)   # (a failure of that job was raised by the flush, or nobody reads its results)
    return bank

  def _resident(self, dst:int, key:tuple|None) -> tuple[Resident, bool]:
    """(the scratch for operand `dst` packed from sources at `key`, whether it holds them already; key None: sources
    whose writes are not tracked, packed every call)."""
    rs = self.resident[dst]
    if key is not None and (hit := next((r for r in rs if r.key == key), None)) is not None: return hit, True
    if len(rs) < MAX_RESIDENT:
      rs.append(r := Resident(self.dev.allocator._alloc(self.prg.scratch[dst - SCRATCH], BufferSpec())))
      return r, False
    self.wait_all(failure_ok=True)      # a job still running may read the operand about to be replaced
    return min(rs, key=lambda r: r.used), False

  def _native_values(self, c, src_idx:np.ndarray, valid:np.ndarray|None, src:RocketBuffer) -> np.ndarray|None:
    """src's elements at src_idx as the pending unpack of the NPU job that last wrote them would write them, read from
    that job's result cube; None if not all of them are there (then plain memory is read, unpacking first)."""
    # the latest pending job decides: where it writes, earlier pending results would be overwritten by its own
    if not (pend := src.domain.pending) or (nat := pend[-1].native) is None or c.src_dtype != nat.plain_dtype or not len(nat.index): return None
    delta, rem = divmod(src.offset - nat.base.offset, np.dtype(c.src_dtype).itemsize)
    if rem: return None
    key = (id(c), nat.key, delta)
    if (idx := self.composed.get(key, False)) is False:
      e = src_idx + delta
      inside = (e >= 0) & (e < len(nat.index))
      cube = np.where(inside, nat.index[np.where(inside, e, 0)], -1)
      covered = cube >= 0 if valid is None else (cube >= 0) | ~valid   # masked points get the fill, whatever is read
      idx = self.composed[key] = np.where(cube >= 0, cube, 0) if covered.all() else None
    if idx is None: return None
    try: self.dev.to_cpu(nat.scratch)
    except JobFailedError as e:
      pend[-1].bank.busy = False  # reported here, once
      raise NpuJobError(f"NPU job of kernel {pend[-1].runner.name} failed: {e}") from e
    with np.errstate(over="ignore"): return self._array(nat.scratch, nat.dtype)[idx].astype(nat.plain_dtype)

  def _copy(self, c, src_idx, dst_idx, valid, lin, slot:dict[int, RocketBuffer], operand:bool, renew:bool=True,
            keep:np.ndarray|None=None) -> str|None:
    """Performs one Copy. For an operand (packing), the reason and nothing written if a value is not finite in the NPU's
    format (NONFINITE_OPERAND_REASON) or rounds onto the constant it is compared with (DISTINCT_REASON); a result
    overflowing a narrower output dtype is IEEE's inf, as on the CPU.
    renew: the destination gets new contents (not when unpacking results its version already stands for). keep: only
    these of its points (one window's elements)."""
    # index forms are computed once per prepared index array (_where, _strided_pair); a kept subset is the call's own
    cached = keep is None
    if keep is not None:
      src_idx, dst_idx, valid, lin = src_idx[keep], dst_idx[keep], None if valid is None else valid[keep], (lambda e, f=lin: f(e)[keep])
    dst = slot[c.dst]
    self.dev.to_cpu(dst)
    def load(s:int, dtype:str, index) -> np.ndarray:
      self.dev.to_cpu(slot[s])
      return self._array(slot[s], dtype)[lin(index)].astype(np.float64)
    slope = lambda e: eval_pexpr(e, load, 1.0) - eval_pexpr(e, load, 0.0)
    if c.value is not None and (c.value[0] == "intercept" or c.src is None):  # a computed value: no source is read
      raw = np.broadcast_to(eval_pexpr(c.value[1], load, 0.0) if c.value[0] == "intercept" else slope(c.value[1]), dst_idx.shape).astype(np.float64)
    elif c.src is None: raw = np.full(len(dst_idx), c.fill, np.float64)
    elif cached and not operand and valid is None and c.value is None and (view := self._strided_pair(src_idx, dst_idx)) is not None:
      # a result that is a strided block of the cube going to a strided block of the buffer (the usual unpack): one
      # converting copy between two views instead of a gather, a conversion and a scatter (same values)
      self.dev.to_cpu(slot[c.src])
      first_s, first_d, shape, ss, ds = view
      src_arr, dst_arr = self._array(slot[c.src], c.src_dtype), self._array(dst, c.dst_dtype)
      src_v = np.lib.stride_tricks.as_strided(src_arr[first_s:], shape, tuple(x * src_arr.itemsize for x in ss), writeable=False)
      dst_v = np.lib.stride_tricks.as_strided(dst_arr[first_d:], shape, tuple(x * dst_arr.itemsize for x in ds))
      with np.errstate(over="ignore"): np.copyto(dst_v, src_v, casting="unsafe")
      if renew: dst.domain.written()
      return None
    else:
      raw = self._native_values(c, src_idx, valid, slot[c.src]) if operand else None
      if operand: setattr(self.dev.layout_stats, k := "packed" if raw is None else "packed_native", getattr(self.dev.layout_stats, k) + 1)
      if raw is None:
        self.dev.to_cpu(slot[c.src])
        raw = self._array(slot[c.src], c.src_dtype)[src_idx]
      if c.value is not None: raw = raw * slope(c.value[1])  # ("slope", e): scaled before the rounding to the NPU's format
      if c.neg_inf is not None and (hit := np.isneginf(raw)).any(): raw = np.where(hit, eval_pexpr(c.neg_inf, load, 0.0), raw)
    if valid is not None: raw[self._where(valid, invert=True) if cached else ~valid] = c.fill
    with np.errstate(over="ignore"): vals = raw.astype(c.dst_dtype)
    if operand and vals.dtype.kind == "f" and not _finite(vals) and not _exact_inf_only(raw, vals, c.exact_inf): return NONFINITE_OPERAND_REASON
    if operand and c.distinct is not None and ((vals == c.distinct) & (raw != c.distinct)).any(): return DISTINCT_REASON
    self._array(dst, c.dst_dtype)[self._where(dst_idx) if cached else dst_idx] = vals
    if renew: dst.domain.written()
    return None

  def _fill(self, c, di:np.ndarray, lin, slot:dict[int, RocketBuffer]) -> tuple[np.ndarray, np.ndarray]:
    """(points, values) an output select's fill Copy writes at this call: its other value (the Copy's intercept,
    float64, rounded to the output dtype) at its points di, or at those where its stored bool mask selects it
    (Copy.where: the mask's data of this call)."""
    def load(s:int, dtype:str, index) -> np.ndarray:
      self.dev.to_cpu(slot[s])
      return self._array(slot[s], dtype)[lin(index)].astype(np.float64)
    raw = np.broadcast_to(eval_pexpr(c.value[1], load, 0.0), di.shape)
    if c.where is not None:
      sel = np.broadcast_to(eval_pexpr(c.where, load, 0.0), di.shape) != 0
      di, raw = di[sel], raw[sel]
    with np.errstate(all="ignore"): return di, raw.astype(c.dst_dtype)

  def _strided_pair(self, src_idx:np.ndarray, dst_idx:np.ndarray) -> tuple|None:
    """(src first, dst first, shape, src strides, dst strides) of a copy whose source and destination indices are
    strided blocks of one common shape with non-negative strides and no repeated destination; None otherwise.
    Computed once per index pair."""
    key = (id(src_idx), id(dst_idx), "strided")
    if (hit := self.index_forms.get(key)) is not None: return hit[2]
    form = None
    if (a := strided_form(src_idx)) is not None and (b := strided_form(dst_idx)) is not None and \
       (c := common_form(a, b)) is not None and min(c[1] + c[2], default=0) >= 0 and \
       len(np.unique(dst_idx)) == len(dst_idx):   # every destination element written once (a scatter's last write wins)
      form = (a[0], b[0], *c)
    self.index_forms[key] = (src_idx, dst_idx, form)   # (the arrays kept alive: their ids stay their own)
    return form

  def _where(self, a:np.ndarray, invert:bool=False) -> np.ndarray|slice:
    """A prepared index array as the cheapest equivalent index, computed once per array: a slice for a contiguous
    run; with invert, the positions where the mask `a` is False."""
    if (hit := self.index_forms.get((id(a), invert))) is not None: return hit[1]
    if invert: form: np.ndarray|slice = np.flatnonzero(~a)
    elif len(a) and a[-1] - a[0] == len(a) - 1 and (np.diff(a) == 1).all(): form = slice(int(a[0]), int(a[-1]) + 1)
    else: form = a
    self.index_forms[(id(a), invert)] = (a, form)   # (the array kept alive: its id stays its own)
    return form

  def _reason_path(self, reason:str) -> FallbackProgram:
    """The kernel's C code, reported with `reason` (one FallbackProgram per reason)."""
    if (path := self.guard_paths.get(reason)) is None:
      path = self.guard_paths[reason] = copy.copy(self.other_path)
      path.reason = reason
    return path

  def _holding(self, guards:list[Guard], slot:dict[int, RocketBuffer], left:np.ndarray) -> tuple[np.ndarray, Guard|None]:
    """(per element of the call, whether every guard holds there; the first guard that fails on an element still `left`).
    A guard over values that are not the program's elements (Guard.first None) holds for all of them or for none."""
    ok, failed = np.ones(len(left), bool), None
    for g in guards:
      self.dev.to_cpu(mem := slot[g.slot])
      m = g.mask(np.frombuffer(to_mv(mem.va_addr, mem.size), np.uint8), len(left))
      if failed is None and (left & ~m).any(): failed = g
      ok &= m
    return ok, failed

  def _next(self) -> NpuRunner|None:
    """The runner of the program's next alternative (the kernel for another window of its tables' arguments), built on
    first need (most kernels' calls stay in their first window); None after the last one."""
    if not self.prg.alternatives: return None
    if self.next is None:
      nxt = self.prg.alternatives[0]
      assert nxt.elements == self.prg.elements, f"{self.name}: alternatives number their elements alike"
      self.next = NpuRunner(self.dev, replace(nxt, alternatives=self.prg.alternatives[1:]), self.other_path, self.depth + 1)
    return self.next

  def _pack(self, slot:dict[int, RocketBuffer]) -> list[RocketBuffer]|str:
    """Packs the operands into their scratch (kept resident while their sources do not change), binding them in `slot`;
    or why an operand cannot be packed for this call (_copy)."""
    operands = []
    for dst, group in self.pack.items():
      srcs = [slot[s] for c, *_ in group for s in ((c.src,) if c.src is not None else ()) + c.params]
      key = tuple((b.domain.version, b.offset) for b in srcs) if all(b.domain.bo is not None for b in srcs) else None
      res, hit = self._resident(dst, key)
      res.used, slot[dst] = self.calls, res.buf
      operands.append(res.buf)
      if hit:
        self.dev.layout_stats.pack_skipped += 1
        continue
      res.key = None
      for c, si, di, valid, lin in group:
        if (why := self._copy(c, si, di, valid, lin, slot, operand=True)) is not None: return why
      res.key = key
    return operands

  def _submit(self, slot:dict[int, RocketBuffer], operands:list[RocketBuffer]) -> tuple[Bank, list, list]:
    """Submits the job's first part (all of it without a split) on a bank; (bank, its BOs, their input handles)."""
    bank = self._bank()
    bank.used = self.calls
    slot |= bank.scratch
    # tasks address only the program's scratch BOs (program.py; kernel buffers may be host memory): bind on change
    if bank.bound != (iovas := tuple(b.dma_addr for b in operands)):
      self.dev.to_cpu(bank.regcmd)
      self.prg.tasks.bind({s: b.dma_addr for s, b in slot.items() if s >= SCRATCH}, bank.regcmd.dma_addr, out=bank.words)
      bank.bound = iovas
    job_bos = [*operands, *bank.scratch.values(), bank.regcmd]
    for b in job_bos: self.dev.to_device(b)
    in_handles = [bank.regcmd.domain.bo.handle] + [b.domain.bo.handle for b in operands]
    self.dev.driver.submit([Job(self.prg.tasks.task_addresses(bank.regcmd.dma_addr)[:self.prg.split or None], in_handles, bank.out_handles)])
    bank.busy = True
    self.dev.inflight[self.serial] = self
    return bank, job_bos, in_handles

  def _submit_rest(self, bank:Bank, job_bos:list, in_handles:list) -> None:
    """Submits the tasks after the split, once the after-job guards held (the checks read the BOs on the CPU: hand them
    back to the device first)."""
    if not self.prg.split or self.prg.split >= len(self.prg.tasks.tasks): return
    for b in job_bos: self.dev.to_device(b)
    self.dev.driver.submit([Job(self.prg.tasks.task_addresses(bank.regcmd.dma_addr)[self.prg.split:], in_handles, bank.out_handles)])
    bank.busy = True

  def _elements(self, k:int) -> list[np.ndarray]:
    """Per unpack copy into kernel buffer k, the program's element at each of its points (Copy.element)."""
    if (els := self.unpack_elements.get(k)) is None:
      assert all(c.element is not None and valid is None for c, _, _, valid, _ in self.unpack[k]), f"{self.name}: an unpack without element numbers"
      els = self.unpack_elements[k] = [lin(c.element) for c, _, _, _, lin in self.unpack[k]]
    return els

  def _results(self) -> np.ndarray:
    """Per element, whether a result is unpacked from it (a program may number padding it never unpacks)."""
    if self.results is None:
      self.results = np.zeros(self.prg.elements, bool)
      for k in self.unpack:
        for e in self._elements(k): self.results[e] = True
    return self.results

  def _unpack(self, slot:dict[int, RocketBuffer], bank:Bank, fills:dict[int, tuple], take:np.ndarray|None) -> None:
    """Leaves the job's results pending in the bank until a CPU access needs them: all of them (take None), or the
    elements `take` holds (an NPU program may then not read them from the cube: other elements come from other jobs)."""
    for k, copies in self.unpack.items():
      dst, inv = slot[k], self.inverse[k]
      native = Native((self.serial, k), slot[inv[0]], inv[1], inv[2], dst, inv[3]) if inv is not None and take is None else None
      keep = None if take is None else [take[e] for e in self._elements(k)]
      p = PendingUnpack(self, copies, {c.src: slot[c.src] for c, *_ in copies} | {k: dst}, native, bank, fills.get(k, ()), keep)
      if len(kept := [q for q in dst.domain.pending if q.writes != p.writes]) < len(dst.domain.pending):
        self.dev.layout_stats.dropped += len(dst.domain.pending) - len(kept)   # written over entirely (a JIT replay)
        dst.domain.pending = kept
      dst.domain.pending.append(p)
      dst.domain.written()
      bank.pending.append((dst.domain, p))
      if dst.domain.bo is None: self.dev.flush(dst.domain)  # host memory (from_blob) may be read behind our back

  def __call__(self, *bufs:RocketBuffer, global_size=(1,1,1), local_size=(1,1,1), vals=(), wait=False, **kw) -> float|None:
    """Runs the call on the first window (program, then its alternatives in order) whose guards hold. A program that
    numbers its elements (NpuProgram.elements) takes each element from the first window whose guards hold on it: window
    0's job, its results unpacked where they hold, then the next window's job for the rest, and so on; each element
    comes from a program whose checks (those after the job too) hold on it, so each program's per-element bound holds
    on every element unpacked from it. Other programs are one element: the whole call takes one window. A call with an
    element in no window runs the C code, reported with the first guard that fails there in the last window."""
    st = time.perf_counter()
    run = lambda prg: prg(*bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait, **kw)
    if self.prg.training_reason is not None and TRAINING:
      self.calls += 1
      return run(self._reason_path(self.prg.training_reason))
    # tinygrad passes the buffers of its program's globals (its simplification may drop some of the AST's)
    base: dict[int, RocketBuffer] = dict(zip(self.prg.globals or range(len(bufs)), bufs))
    left = np.ones(max(self.prg.elements, 1), bool)   # elements no window has taken yet
    parts: list[tuple[NpuRunner, dict[int, RocketBuffer], Bank, np.ndarray]] = []
    runner: NpuRunner = self
    # every window's operands are packed before any result is unpacked: an output buffer may be an input too
    while True:
      runner.calls += 1
      if isinstance(operands := runner._pack(slot := dict(base)), str): return run(self._reason_path(operands))
      ok, failed = runner._holding(runner.before, slot, left)
      take = left & ok if failed is None or runner.prg.alternatives else np.zeros_like(left)   # the last window leaves some: the C code
      # once elements go separate ways, numbers no result uses (a contraction's padding) need no window: no job for them alone
      if failed is not None and self.prg.elements: left &= self._results(); take &= left
      if take.any():
        bank, job_bos, in_handles = runner._submit(slot, operands)
        if runner.after:   # values the NPU computed must hold before its results count: wait for the job and check them
          runner._wait(bank, failure_ok=False)
          ok, failed_after = runner._holding(runner.after, slot, take)
          failed, take = failed or failed_after, take & ok
          if failed_after is not None and self.prg.elements: left &= self._results(); take &= left
        if take.any():
          runner._submit_rest(bank, job_bos, in_handles)
          parts.append((runner, slot, bank, take))
      left &= ~take
      if not left.any(): break
      if (nxt := runner._next()) is None:
        assert failed is not None
        return run(runner._reason_path(f"{GUARD_REASON if not failed.after else AFTER_GUARD_REASON}: {failed.what}"))
      runner = nxt
    # an output select's other values (and a stored bool mask's points) are read from the kernel's buffers before any
    # result is pending there: an output that is also an operand is read as the call found it
    fills = [{k: tuple((*r._fill(c, di, lin, slot), c.dst_dtype) for c, _, di, _, lin in fs) for k, fs in r.fills.items()}
             for r, slot, _, _ in parts]
    for (r, slot, bank, take), fl in zip(parts, fills): r._unpack(slot, bank, fl, take if len(parts) > 1 else None)
    if len(parts) == 1: report.kernel_ran(self.name, "npu", parts[0][0].prg.summary)
    else:
      report.kernel_ran(self.name, "npu", f"{len(parts)} range windows, each element from the first whose guards hold on it: " +
                        " | ".join(r.prg.summary for r, *_ in parts), {f"[{r.depth}] {r.prg.summary}": int((take & r._results()).sum()) for r, _, _, take in parts})
    for r, _, bank, _ in parts:
      if wait or (WAIT_EMULATED_JOBS and self.dev.emulated): r._wait(bank, failure_ok=False)
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
    # the runner waits for each emulated job right after submitting it: the waiting thread runs it (emu/kernel.py)
    if self.emulated and WAIT_EMULATED_JOBS: file.run_on_wait = True
    arch = {'amd64':'x86_64', 'aarch64':'arm64'}.get(m:=platform.machine().lower(), m) + ",native"  # ClangCompiler wants "<arch>,<cpu>"
    renderers = [RocketFP32Renderer, RocketRenderer] if config.precision() == "fp32" else [RocketRenderer, RocketFP32Renderer]
    self.layout_stats = LayoutStats()
    self.inflight: dict[int, NpuRunner] = {}   # serial -> runner with a job submitted since the last synchronize
    super().__init__(device, RocketAllocator(self), renderers, None, arch=arch)

  def runtime(self, obj:TinyELF):
    blob = parse_blob(obj.lib)
    c_code = TinyELF(blob.elf, obj.name, obj.target, obj.signature, obj.profile_key)
    if blob.kind == "fallback": return FallbackProgram(self, c_code, blob.reason)
    return NpuRunner(self, NpuProgram.from_bytes(blob.payload), FallbackProgram(self, c_code, NONFINITE_OPERAND_REASON))

  def to_cpu(self, buf:RocketBuffer) -> None:
    """Make the buffer's BO safe for CPU access: waits for the NPU jobs writing it, syncs the CPU cache, and unpacks
    NPU results its plain memory does not hold yet."""
    if not (d:=buf.domain).cpu_owned:
      self.driver.prep_bo(d.bo.handle)
      d.cpu_owned = True
    if d.pending: self.flush(d)

  def flush(self, d:BoDomain) -> None:
    """Unpacks the domain's pending NPU results into its plain memory, oldest first; a result a later one writes over
    entirely (the same program's copies into the same place) is skipped."""
    pending, d.pending = d.pending, []
    for i, p in enumerate(pending):
      if any(q.writes == p.writes for q in pending[i + 1:]): self.layout_stats.dropped += 1
      else: p.apply()

  def to_device(self, buf:RocketBuffer) -> None:
    """Hand the buffer's BO to the NPU: flushes CPU writes."""
    if (d:=buf.domain).bo is None: raise RuntimeError("host (from_blob) buffers cannot be used by NPU programs; copy them first")
    if d.cpu_owned:
      self.driver.fini_bo(d.bo.handle)
      d.cpu_owned = False

  def synchronize(self):
    """Waits for every submitted job (a CPU access waits for its own BO's writers anyway, in to_cpu)."""
    inflight, self.inflight = self.inflight, {}
    for r in inflight.values(): r.wait_all()
  def finalize(self): pass
