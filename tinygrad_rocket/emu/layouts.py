"""The NPU's memory layouts as address arithmetic, and DMA through the file's IOVA space (vectorised gathers/scatters).

Feature cubes (rocket_fp16_ew_ppu.md §1.2, rocket_hw.md §5.1): NC1HWC2 with a 16-byte atom, C2 = 16 / element bytes
(int8 16, fp16/bf16 8, fp32/int32/tf32 4). Element (c, h, w) of a cube lives at
    base + (c // C2) * surface_pitch + h * row_pitch + w * 16 + (c % C2) * element_bytes
where the pitches come from the registers of the unit doing the DMA (CNA: LINE_STRIDE/SURF_STRIDE, see
`cna_pitches`; DPU WDMA: DST_SURF_STRIDE and the cube width).

Weights (rocket_fp16_ew_ppu.md §1.3, rocket_hw.md §5.2): kernel groups of NG kernels x channel groups of KG channels,
each block tap-major [KH][KW] then kernel then channel; the last kernel group and the last channel group are partial
(exactly the bytes Mesa's packing loop emits for its non-ragged channel counts). Depthwise: channel groups of G,
block [KH][KW][channels of the group].

All DMA goes through IovaSpace: a read or write outside the file's BOs raises IommuFault. Writes are planned
(`plan_scatter`: every destination checked) before any byte is written (`Scatter.commit`).
"""
from __future__ import annotations
import functools
from dataclasses import dataclass
import numpy as np
from tinygrad_rocket.emu.memory import IovaSpace, IommuFault

ATOM = 16  # bytes per feature atom, every precision
ATOM_ITEM = np.dtype((np.void, ATOM))   # one atom as a numpy item (copied as bytes)

def ceil_div(a:int, b:int) -> int: return -(-a // b)

# ---- feature strides -------------------------------------------------------------------------------------------
# ⚠ Units of CNA LINE_STRIDE / SURF_STRIDE (rocket_hw.md §4.1, rocket_fp16_ew_ppu.md §1.5 hypothesis): both count
# 16-byte atoms; the CNA fetches 4-row blocks, LINE_STRIDE is one 4-row block (so a row is LINE_STRIDE/4 atoms) and
# LINE_STRIDE + SURF_STRIDE is one surface. This is the one model consistent with every hardware-validated value:
# Mesa (LINE 4*W, SURF W*(H-4), with SURF computed from the whole operation's height while a split task's DATAIN_HEIGHT
# is smaller) and gregordinary/mtx512 (LINE 4*W, SURF max(W*(H-4), 0)). A wrong SURF_STRIDE therefore mis-addresses
# every surface after the first, as the hardware does (GN: truncated 4W*(H/4-1) fails for H%4 != 0).
def cna_pitches(line_stride:int, surf_stride:int) -> tuple[int, int]:
  """(row pitch, surface pitch) in bytes of a packed (NC1HWC2) CNA feature read."""
  return line_stride * ATOM // 4, (line_stride + surf_stride) * ATOM

# ⚠ Pixel ("ARGB_IN", NHWC) path, Mesa's 1-channel int8 input: rows of LINE_STRIDE bytes (Mesa: max(W,16) bytes per
# row, LINE_STRIDE = max(W,16)). Only the 1-byte-per-pixel case is validated, where bytes and pixels coincide.
def pixel_row_pitch(line_stride:int) -> int: return line_stride

# ---- DMA helpers ------------------------------------------------------------------------------------------------
def _extent(shape:tuple[int, ...], strides:tuple[int, ...], inner:int) -> int:
  """Bytes from the first to one past the last byte of a strided block whose innermost run is `inner` bytes."""
  if any(n == 0 for n in shape): return 0
  return sum((n - 1) * s for n, s in zip(shape, strides)) + inner

def gather(mem:IovaSpace, base:int, shape:tuple[int, ...], strides:tuple[int, ...], inner:int, unit:str) -> np.ndarray:
  """uint8 array of shape + (inner,): the `inner`-byte runs at base + sum(i_k * strides_k). Non-negative strides.
  Faults exactly when one of the runs (not the holes between them) lies outside the file's BOs."""
  return np.ascontiguousarray(gather_view(mem, base, shape, strides, inner, unit))

def gather_view(mem:IovaSpace, base:int, shape:tuple[int, ...], strides:tuple[int, ...], inner:int, unit:str) -> np.ndarray:
  """gather without the copy: a read-only strided view of the BO when one BO holds the whole block (it changes with the
  BO: read it before the task writes), else the gathered copy. Same faults as gather."""
  assert all(s >= 0 for s in strides)
  ext = _extent(shape, strides, inner)
  out_shape = tuple(shape) + (inner,)
  if ext == 0: return np.zeros(out_shape, np.uint8)
  try:
    flat = mem.ndarray(base, np.uint8, ext, unit=unit)
  except IommuFault:
    return _gather_rows(mem, base, shape, strides, inner, unit)
  return np.lib.stride_tricks.as_strided(flat, shape=out_shape, strides=tuple(strides) + (1,), writeable=False)

def _gather_rows(mem:IovaSpace, base:int, shape, strides, inner:int, unit:str) -> np.ndarray:
  """Slow path for a block whose extent crosses unmapped holes: every run is checked (and read) on its own."""
  out = np.empty(tuple(shape) + (inner,), np.uint8)
  for idx in np.ndindex(*shape):
    addr = base + sum(i * s for i, s in zip(idx, strides))
    out[idx] = np.frombuffer(mem.read(addr, inner, unit=unit), np.uint8)
  return out

@dataclass
class Scatter:
  """A planned strided write: every destination range was checked when it was planned."""
  mem: IovaSpace
  base: int
  shape: tuple[int, ...]
  strides: tuple[int, ...]
  inner: int
  unit: str
  per_run: bool   # the block spans several BOs or holes: write run by run

  @property
  def nbytes(self) -> int: return int(np.prod(self.shape)) * self.inner

  def commit(self, data:np.ndarray) -> None:
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(tuple(self.shape) + (self.inner,))
    if self.nbytes == 0: return
    if not self.per_run:
      ext = _extent(self.shape, self.strides, self.inner)
      dst = np.frombuffer(self.mem.view(self.base, ext, "write", self.unit), np.uint8)
      v = np.lib.stride_tricks.as_strided(dst, shape=data.shape, strides=tuple(self.strides) + (1,))
      v[...] = data
      return
    for idx in np.ndindex(*self.shape):
      addr = self.base + sum(i * s for i, s in zip(idx, self.strides))
      self.mem.write(addr, data[idx].tobytes(), unit=self.unit)

  def commit_cube(self, cube:np.ndarray) -> None:
    """Writes a (C, H, W) cube as NC1HWC2 surfaces (C2 = 16 / itemsize, C a multiple of C2): cube_to_atoms and commit
    in one transposing copy."""
    if self.per_run or self.nbytes == 0: return self.commit(cube_to_atoms(cube, cube.dtype))
    C, H, W = cube.shape
    c2 = ATOM // cube.dtype.itemsize
    assert C % c2 == 0 and self.shape == (C // c2, H) and self.inner == W * ATOM
    dst = np.frombuffer(self.mem.view(self.base, _extent(self.shape, self.strides, self.inner), "write", self.unit), np.uint8)
    # (surface, row, pixel, byte) views of the destination: written in place, never a copy
    v = np.lib.stride_tricks.as_strided(dst, shape=(C // c2, H, W, ATOM), strides=tuple(self.strides) + (ATOM, 1))
    if (hwc := cube.transpose(1, 2, 0)).flags.c_contiguous:   # pixel-major memory: whole atoms move (16-byte items)
      v.view(ATOM_ITEM)[..., 0] = hwc.view(ATOM_ITEM).transpose(2, 0, 1)
    else: v.view(cube.dtype).transpose(0, 3, 1, 2)[...] = cube.reshape(C // c2, c2, H, W)

def plan_scatter(mem:IovaSpace, base:int, shape:tuple[int, ...], strides:tuple[int, ...], inner:int, unit:str) -> Scatter:
  """Checks every destination run of a strided write (IommuFault if any lies outside the BOs); writes nothing."""
  assert all(s >= 0 for s in strides)
  ext = _extent(shape, strides, inner)
  if ext == 0: return Scatter(mem, base, tuple(shape), tuple(strides), inner, unit, False)
  try:
    mem.view(base, ext, "write", unit)      # one BO holds the whole block: one zero-copy view
    return Scatter(mem, base, tuple(shape), tuple(strides), inner, unit, False)
  except (IommuFault, ValueError):
    pass
  for idx in np.ndindex(*shape):
    mem.check(base + sum(i * s for i, s in zip(idx, strides)), inner, "write", unit)
  return Scatter(mem, base, tuple(shape), tuple(strides), inner, unit, True)

def atom_addresses(base:int, shape:tuple[int, ...], strides:tuple[int, ...]) -> np.ndarray:
  """Start addresses of every run of a strided block (for overlap checks)."""
  a = np.full((), base, np.int64)
  for n, s in zip(shape, strides): a = a[..., None] + np.arange(n, dtype=np.int64) * s
  return a.reshape(-1)

# ---- feature cubes ----------------------------------------------------------------------------------------------
def atoms_to_cube(atoms:np.ndarray, dtype:np.dtype, channels:int) -> np.ndarray:
  """(S, H, W, 16) uint8 atoms -> (channels, H, W) elements of `dtype` (C2 = 16 / itemsize per atom)."""
  S, H, W, _ = atoms.shape
  el = atoms.view(dtype)                               # (S, H, W, C2)
  c2 = el.shape[-1]
  cube = el.transpose(0, 3, 1, 2).reshape(S * c2, H, W)
  return cube[:channels]

def cube_to_atoms(cube:np.ndarray, dtype:np.dtype) -> np.ndarray:
  """(C, H, W) -> (S, H, W, 16) uint8 atoms, C a multiple of C2."""
  cube = np.ascontiguousarray(cube, dtype=dtype)
  C, H, W = cube.shape
  c2 = ATOM // cube.dtype.itemsize
  assert C % c2 == 0
  el = cube.reshape(C // c2, c2, H, W).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(el).view(np.uint8).reshape(C // c2, H, W, ATOM)

# ---- weights ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def weight_index_direct(kernels:int, channels:int, kh:int, kw:int, ng:int, kg:int) -> np.ndarray:
  """Element index into the weight buffer of every (kernel, channel, tap_h, tap_w) of a direct convolution, shape
  (kernels, channels, kh, kw): kernel groups of ng, channel groups of kg, partial last groups, blocks [kh][kw][k][c]."""
  k = np.arange(kernels)[:, None, None, None]
  c = np.arange(channels)[None, :, None, None]
  y = np.arange(kh)[None, None, :, None]
  x = np.arange(kw)[None, None, None, :]
  g, kk = k // ng, k % ng
  nk = np.minimum(ng, kernels - g * ng)                       # kernels in this kernel group
  j, cc = c // kg, c % kg
  nc = np.minimum(kg, channels - j * kg)                      # channels in this channel group
  group_base = g * ng * channels * kh * kw                    # all previous kernel groups are full
  block_base = j * kg * kh * kw * nk                          # previous channel groups of this kernel group are full
  idx = group_base + block_base + ((y * kw + x) * nk + kk) * nc + cc
  idx.flags.writeable = False                                 # cached: shared by every caller
  return idx

@functools.lru_cache(maxsize=64)
def weight_index_depthwise(channels:int, kh:int, kw:int, g:int) -> np.ndarray:
  """Element index of every (channel, tap_h, tap_w) of a depthwise weight buffer: [C/g][kh][kw][g], last group partial."""
  c = np.arange(channels)[:, None, None]
  y = np.arange(kh)[None, :, None]
  x = np.arange(kw)[None, None, :]
  j, cc = c // g, c % g
  nc = np.minimum(g, channels - j * g)
  idx = j * g * kh * kw + (y * kw + x) * nc + cc
  idx.flags.writeable = False
  return idx
