"""The BINARY a ROCKET kernel compiles to: which engine runs it, and why.

tinygrad caches a compiled PROGRAM and hands only its BINARY (inside a TinyELF) to the device at run time, possibly
compiled in another process. So the lowering decision travels inside the binary:
  FALLBACK: magic, u32 length, UTF-8 reason, then the ELF object of tinygrad's C code for the kernel
  NPU:      magic, then the serialized NpuProgram
"""
from __future__ import annotations
import struct
from typing import NamedTuple

FALLBACK_MAGIC, NPU_MAGIC = b"RKFB", b"RKNP"
_LEN = struct.Struct("<I")

class Blob(NamedTuple):
  kind: str      # "fallback" | "npu"
  reason: str    # why a fallback kernel is not on the NPU ("" for NPU kernels)
  payload: bytes

def fallback_blob(reason:str, elf:bytes) -> bytes:
  r = reason.encode()
  return FALLBACK_MAGIC + _LEN.pack(len(r)) + r + elf

def npu_blob(program:bytes) -> bytes: return NPU_MAGIC + program

# a kernel compiled for ROCKET outside our to_program hook (tinygrad's BEAM search compiles candidates directly)
UNHOOKED_REASON = "compiled outside the ROCKET lowering hook (e.g. a BEAM search candidate)"

def parse_blob(lib:bytes) -> Blob:
  if lib[:4] == NPU_MAGIC: return Blob("npu", "", lib[4:])
  if lib[:4] == FALLBACK_MAGIC:
    (n,) = _LEN.unpack_from(lib, 4)
    return Blob("fallback", lib[8:8+n].decode(), lib[8+n:])
  return Blob("fallback", UNHOOKED_REASON, lib)
