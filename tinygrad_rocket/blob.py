"""The BINARY a ROCKET kernel compiles to: which engine runs it, and why.

tinygrad caches a compiled PROGRAM and hands only its BINARY (inside a TinyELF) to the device at run time, possibly
compiled in another process. So the lowering decision travels inside the binary:
  FALLBACK: magic, u32 length, UTF-8 reason, then the ELF object of tinygrad's C code for the kernel
  NPU:      magic, u32 length, the serialized NpuProgram (with its alternatives for other windows of its tables'
            arguments), then the ELF object of the same kernel's C code (the other path for a call the NPU cannot take,
            e.g. an operand beyond fp16's range or beyond every window)
"""
from __future__ import annotations
import struct
from typing import NamedTuple

FALLBACK_MAGIC, NPU_MAGIC = b"RKFB", b"RKNP"
_LEN = struct.Struct("<I")

class Blob(NamedTuple):
  kind: str      # "fallback" | "npu"
  reason: str    # why a fallback kernel is not on the NPU ("" for NPU kernels)
  payload: bytes # the ELF (fallback) or the serialized NpuProgram
  elf: bytes     # the kernel's C code

def fallback_blob(reason:str, elf:bytes) -> bytes:
  r = reason.encode()
  return FALLBACK_MAGIC + _LEN.pack(len(r)) + r + elf

def npu_blob(program:bytes, elf:bytes) -> bytes: return NPU_MAGIC + _LEN.pack(len(program)) + program + elf

# a kernel compiled for ROCKET outside our to_program hook (tinygrad's BEAM search compiles candidates directly)
UNHOOKED_REASON = "compiled outside the ROCKET lowering hook (e.g. a BEAM search candidate)"

def parse_blob(lib:bytes) -> Blob:
  if lib[:4] in (NPU_MAGIC, FALLBACK_MAGIC):
    (n,) = _LEN.unpack_from(lib, 4)
    head, elf = lib[8:8+n], lib[8+n:]
    return Blob("npu", "", head, elf) if lib[:4] == NPU_MAGIC else Blob("fallback", head.decode(), elf, elf)
  return Blob("fallback", UNHOOKED_REASON, lib, lib)
