"""A test harness for register programs on the emulator: for the emulator's tests and scripts/bench_emu.py.

The programs themselves are the ops layer's (tinygrad_rocket/ops/conv.py, elementwise.py, pool.py, built with our
encoder); this module packs numpy arrays into the NPU's layouts (via the emulator's own index functions in layouts.py;
fidelity with the hardware is what tests/fidelity checks, independently), and runs programs as jobs on an emulated
file (`Session`, `run_program`).
"""
from __future__ import annotations
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket.emu import layouts
from tinygrad_rocket.emu.descs import WEIGHT_GROUPS, DW_GROUPS
from tinygrad_rocket.ops.program import Program, entries

NP_DTYPE = {"int8": np.dtype(np.int8), "fp16": np.dtype("<f2"), "bf16": np.dtype("<u2"), "tf32": np.dtype("<f4"),
            "fp32": np.dtype("<f4"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2")}

# ---- layouts ------------------------------------------------------------------------------------------------------
def to_storage(x:np.ndarray, prec:str) -> np.ndarray:
  """Values -> the stored element type (bf16 stored as its top 16 bits, truncated; tf32 as fp32)."""
  if prec == "bf16": return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)
  return np.asarray(x).astype(NP_DTYPE[prec])

def pack_cube(x:np.ndarray, prec:str, surface_pitch:int|None=None) -> bytes:
  """(C, H, W) -> NC1HWC2 bytes, C zero-padded to whole atoms; surfaces `surface_pitch` bytes apart (default dense)."""
  st = to_storage(x, prec)
  C, H, W = st.shape
  c2 = 16 // st.dtype.itemsize
  full = np.zeros((layouts.ceil_div(C, c2) * c2, H, W), st.dtype)
  full[:C] = st
  atoms = layouts.cube_to_atoms(full, st.dtype)
  if surface_pitch is None: return atoms.tobytes()
  out = bytearray(surface_pitch * (atoms.shape[0] - 1) + H * W * 16)
  for s in range(atoms.shape[0]): out[s * surface_pitch:s * surface_pitch + H * W * 16] = atoms[s].tobytes()
  return bytes(out)

def unpack_cube(raw:bytes, prec:str, C:int, H:int, W:int, surface_pitch:int|None=None, base:int=0) -> np.ndarray:
  dt = NP_DTYPE[prec]
  c2 = 16 // dt.itemsize
  S = layouts.ceil_div(C, c2)
  pitch = surface_pitch if surface_pitch is not None else H * W * 16
  buf = np.frombuffer(raw, np.uint8)
  atoms = np.stack([buf[base + s * pitch:base + s * pitch + H * W * 16] for s in range(S)]).reshape(S, H, W, 16)
  return layouts.atoms_to_cube(atoms, dt, C).copy()

def pack_weights(w:np.ndarray, prec:str, depthwise:bool=False) -> bytes:
  """Direct (K, C, kh, kw) or depthwise (C, kh, kw) weights in the kernel-group layout of `prec`."""
  st = to_storage(w, prec)
  out = np.zeros(st.size, st.dtype)
  if depthwise:
    C, kh, kw = st.shape
    out[layouts.weight_index_depthwise(C, kh, kw, DW_GROUPS[prec])] = st
  else:
    K, C, kh, kw = st.shape
    out[layouts.weight_index_direct(K, C, kh, kw, *WEIGHT_GROUPS[prec])] = st
  return out.tobytes()

# ---- runner -------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
  out: dict[int, bytes]            # slot -> whole BO contents after the job(s)
  failure: str|None
  stats: list = field(default_factory=list)   # cost.JobStats per job
  iovas: dict[int, int] = field(default_factory=dict)

class Session:
  """One emulated open file with numbered buffer slots; runs task lists as jobs. Keeps its Npu, so register state
  persists between runs like on the hardware (`npu` shared on purpose in persistence tests)."""
  def __init__(self, npu=None):
    from tinygrad_rocket.emu import EmuFile, Npu
    from tinygrad_rocket.ioctl import RocketDriver
    self.npu = npu if npu is not None else Npu()
    self.file = EmuFile(self.npu)
    self.drv = RocketDriver(self.file)
    self.bos: dict[int, Any] = {}

  def close(self) -> None: self.drv.close()
  def __enter__(self) -> Session: return self
  def __exit__(self, *exc) -> None: self.close()

  def buffer(self, slot:int, data:bytes|int, fill:int=0) -> Any:
    """Create (or rewrite) buffer `slot` with `data` (bytes, or a size to zero/fill)."""
    size = data if isinstance(data, int) else len(data)
    bo = self.bos.get(slot)
    if bo is None or bo.size < size:
      bo = self.bos[slot] = self.drv.create_bo(max(size, 1))
    self.drv.prep_bo(bo.handle)
    bo.view[:] = bytes([fill]) * len(bo.view)
    if not isinstance(data, int): bo.view[:len(data)] = data
    self.drv.fini_bo(bo.handle)
    return bo

  def iovas(self) -> dict[int, int]: return {s: b.dma_address for s, b in self.bos.items()}

  def run(self, tasks:Sequence[regs.Task], outs:Sequence[int], jobs:Sequence[Sequence[int]]|None=None,
          extra_iovas:Mapping[int, int]|None=None, raw_enable:int|None=None) -> RunResult:
    """raw_enable: patch every op-enable entry to this mask after assembly (to test masks the encoder refuses)."""
    from tinygrad_rocket.ioctl import Job, JobFailedError
    tl = regs.assemble(list(tasks))
    rc = self.drv.create_bo(tl.nbytes)
    iovas = self.iovas() | dict(extra_iovas or {})
    words = tl.bind(iovas, rc.dma_address)
    if raw_enable is not None:
      op = (words >> np.uint64(48)) == np.uint64(regs.TARGET_OP_ENABLE)
      words[op] = np.uint64(regs.op_enable_entry(raw_enable))
    self.drv.prep_bo(rc.handle); rc.view[:tl.nbytes] = words.tobytes(); self.drv.fini_bo(rc.handle)
    addrs = tl.task_addresses(rc.dma_address)
    groups = jobs or [list(range(len(addrs)))]
    n0 = len(self.file.job_stats)
    self.drv.submit([Job([addrs[i] for i in g], [b.handle for s, b in self.bos.items() if s not in outs],
                         [self.bos[s].handle for s in outs]) for g in groups])
    failure = None
    for s in outs:
      try: self.drv.prep_bo(self.bos[s].handle)
      except JobFailedError as e: failure = failure or str(e.reason)
    self.drv.close_bo(rc)
    return RunResult({s: bytes(self.bos[s].view) for s in outs}, failure, list(self.file.job_stats)[n0:], iovas)

def run_program(progs:Sequence[Program]|Program, buffers:Mapping[int, bytes|int], outs:Sequence[int], enable:int|None=None,
                npu=None, jobs=None, extra_iovas=None, fill:int=0, raw_enable:int|None=None) -> RunResult:
  """Convenience: a fresh Session (or one on `npu`), buffers created in slot order, the programs as tasks of one job."""
  if isinstance(progs, dict): progs = [progs]
  with Session(npu) as s:
    for slot in sorted(buffers): s.buffer(slot, buffers[slot], fill=fill if slot in outs else 0)
    tasks = [regs.Task(entries(p), enable if enable is not None else regs.MESA_CONV_ENABLE) for p in progs]
    return s.run(tasks, outs, jobs, extra_iovas, raw_enable)
