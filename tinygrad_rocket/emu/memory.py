"""One open file's NPU address space: a 32-bit IOVA range holding its BOs, and the NPU's DMA view of it.

Kernel facts (rocket_hw.md §1.4, §2.1): each fd has its own IOMMU domain with a drm_mm allocator over
the 32-bit aperture, BOs are mapped page-aligned, first fit from the aperture start, so the first BO
gets IOVA 0 (0 is a valid address, never "no buffer"). Any DMA to a page no BO maps is an IOMMU fault.
All NPU DMA in the emulator goes through IovaSpace; a fault fails the job and nothing is written, so
writers call check() for every destination before writing any.
"""
from __future__ import annotations
import bisect, threading
from dataclasses import dataclass
from typing import Any
import numpy as np

PAGE_SIZE = 4096               # IOMMU page granule used by rocket BOs
IOVA_SPACE_SIZE = 1 << 32      # Rockchip IOMMU aperture: 32-bit (rocket_hw.md §2.1)

def page_round(n:int) -> int: return -(-n // PAGE_SIZE) * PAGE_SIZE

class IommuFault(Exception):
  """NPU DMA touched an IOVA no BO of this file maps. str() is the fault description used in job reasons."""
  def __init__(self, iova:int, nbytes:int, access:str="access", unit:str="NPU"):
    self.iova, self.nbytes, self.access, self.unit = iova, nbytes, access, unit
    super().__init__(f"{unit} {access} of {nbytes} bytes at IOVA {iova:#x} outside any BO")
  def __reduce__(self): return (type(self), (self.iova, self.nbytes, self.access, self.unit))

class IovaSpaceExhausted(MemoryError):
  """No free IOVA range is large enough (the kernel's drm_mm insert fails: ENOMEM)."""

@dataclass(eq=False)
class Mapping:
  iova: int
  size: int            # page-rounded: the IOMMU maps whole pages
  buf: memoryview      # writable bytes backing [iova, iova+size)
  @property
  def end(self) -> int: return self.iova + self.size

class IovaSpace:
  def __init__(self, size:int=IOVA_SPACE_SIZE):
    self.size = size
    self._starts: list[int] = []       # sorted IOVAs of _maps, for bisect
    self._maps: list[Mapping] = []
    self._lock = threading.Lock()      # the job worker reads while the ioctl thread maps/unmaps

  # ---- allocation (CREATE_BO / last reference dropped) ----
  def map(self, mem:Any, size:int) -> int:
    """Place `size` bytes (page-rounded) of the writable buffer `mem` at the lowest free IOVA; returns it."""
    size = page_round(size)
    if size <= 0: raise ValueError("cannot map an empty range")
    buf = memoryview(mem).cast("B")
    if buf.readonly or buf.nbytes < size: raise ValueError(f"backing buffer must be writable and hold {size} bytes")
    with self._lock:
      at, idx = 0, 0
      for idx, m in enumerate(self._maps):
        if m.iova - at >= size: break
        at = m.end
      else: idx = len(self._maps)
      if at + size > self.size: raise IovaSpaceExhausted(f"no free {size:#x}-byte range in the {self.size:#x}-byte IOVA space")
      self._starts.insert(idx, at); self._maps.insert(idx, Mapping(at, size, buf[:size]))
      return at

  def unmap(self, iova:int) -> None:
    with self._lock:
      idx = bisect.bisect_left(self._starts, iova)
      if idx == len(self._starts) or self._starts[idx] != iova: raise KeyError(f"no mapping starts at IOVA {iova:#x}")
      del self._starts[idx], self._maps[idx]

  def mappings(self) -> list[Mapping]:
    with self._lock: return list(self._maps)

  # ---- DMA view ----
  def _pieces(self, iova:int, nbytes:int, access:str, unit:str) -> list[tuple[memoryview, int, int]]:
    """(buffer, offset, length) pieces covering [iova, iova+nbytes); adjacent BOs are one contiguous range, as in the IOMMU."""
    if nbytes < 0: raise ValueError(f"negative DMA length {nbytes}")
    if nbytes == 0: return []
    if iova < 0 or iova + nbytes > self.size: raise IommuFault(iova, nbytes, access, unit)
    out: list[tuple[memoryview, int, int]] = []
    with self._lock:
      idx = bisect.bisect_right(self._starts, iova) - 1
      pos, end = iova, iova + nbytes
      while pos < end:
        if idx < 0 or idx >= len(self._maps) or not self._maps[idx].iova <= pos < self._maps[idx].end:
          raise IommuFault(iova, nbytes, access, unit)
        m = self._maps[idx]
        n = min(end, m.end) - pos
        out.append((m.buf, pos - m.iova, n))
        pos, idx = pos + n, idx + 1
    return out

  def check(self, iova:int, nbytes:int, access:str="write", unit:str="NPU") -> None:
    """Raise IommuFault unless every byte of [iova, iova+nbytes) lies in a BO of this file."""
    self._pieces(iova, nbytes, access, unit)

  def read(self, iova:int, nbytes:int, unit:str="NPU") -> bytes:
    return b"".join(bytes(buf[off:off+n]) for buf, off, n in self._pieces(iova, nbytes, "read", unit))

  def write(self, iova:int, data:Any, unit:str="NPU") -> None:
    """All-or-nothing: the whole range is checked before the first byte is written."""
    src = memoryview(data).cast("B")
    pos = 0
    for buf, off, n in self._pieces(iova, src.nbytes, "write", unit):
      buf[off:off+n] = src[pos:pos+n]
      pos += n

  def view(self, iova:int, nbytes:int, access:str="access", unit:str="NPU") -> memoryview:
    """Zero-copy writable bytes of a range inside one BO (a range spanning adjacent BOs: use read/write)."""
    pieces = self._pieces(iova, nbytes, access, unit)
    if len(pieces) > 1: raise ValueError(f"[{iova:#x}, {iova+nbytes:#x}) spans {len(pieces)} BOs; no single zero-copy view")
    if not pieces: return memoryview(bytearray())
    buf, off, n = pieces[0]
    return buf[off:off+n]

  def ndarray(self, iova:int, dtype:Any, count:int, *, writable:bool=False, unit:str="NPU") -> np.ndarray:
    """`count` elements of `dtype` at `iova`. writable=True: a zero-copy view in one BO; else read-only (copied if it spans BOs)."""
    dt = np.dtype(dtype)
    nbytes = dt.itemsize * count
    if writable: return np.frombuffer(self.view(iova, nbytes, "write", unit), dtype=dt)
    pieces = self._pieces(iova, nbytes, "read", unit)
    arr = (np.frombuffer(pieces[0][0][pieces[0][1]:pieces[0][1]+nbytes], dtype=dt) if len(pieces) == 1
           else np.frombuffer(self.read(iova, nbytes, unit), dtype=dt))
    arr.flags.writeable = False
    return arr
