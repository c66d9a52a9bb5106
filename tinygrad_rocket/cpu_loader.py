"""x86-64 loading of tinygrad's C kernels with calls that reach any address (fallback kernels and tinygrad's CPU device).

tinygrad 0.14 links a kernel's object file itself (runtime/support/elf.py jit_loader) into an anonymous mmap and resolves
a call to libm / libgcc_s (e.g. fp16 conversions, `R_X86_64_PLT32`) as a 32-bit displacement from the call site. mmaps
are placed top-down below the shared libraries, so once a process has mapped more than 2 GiB below them (BOs, emulator
caches, tinygrad's cached buffers: a long test session or a big model), a new kernel's displacement no longer fits and
tinygrad truncates it silently: the call jumps to an arbitrary address and the process dies in the kernel (SIGSEGV).
AArch64 (the boards) already gets a trampoline there; this gives x86-64 the same: a call whose displacement does not fit
goes through a 14-byte `jmp [rip+0]; .quad target` stub appended to the image. Calls that fit are linked byte for byte
as tinygrad links them.
"""
from __future__ import annotations
import platform, struct
from tinygrad_rocket._tg import CPUProgram, elf_loader, libc

REL32 = range(-2**31, 2**31)          # what a 32-bit signed displacement reaches
JMP_RIP_INDIRECT = b"\xff\x25\x00\x00\x00\x00"   # jmp qword ptr [rip+0]: the 8 bytes that follow hold the target

def x86_64_jit_loader(obj:bytes, base:int, link_libs:list) -> bytes:
  """The kernel image linked for address `base` (tinygrad's jit_loader, plus trampolines for far calls)."""
  image_, _, relocs = elf_loader(obj, link_libs=link_libs)
  image = bytearray(image_)
  stubs: dict[int, int] = {}   # call target -> offset of its stub in the image
  for ploc, tgt, r_type, addend in relocs:
    if r_type == libc.R_X86_64_PC32: disp = tgt + addend - ploc            # within the image (as tinygrad)
    elif r_type == libc.R_X86_64_PLT32:
      if (disp := tgt + addend - ploc - base) not in REL32:
        if tgt not in stubs:
          stubs[tgt] = len(image)
          image += JMP_RIP_INDIRECT + struct.pack("<Q", tgt)
        disp = stubs[tgt] + addend - ploc   # the stub is in the image: S + A - P with S = base + stub offset
    else: raise NotImplementedError(f"relocation type {r_type} in a kernel object")
    if disp not in REL32: raise RuntimeError(f"relocation at {ploc:#x} out of 32-bit range ({disp:#x}) in a kernel object")
    image[ploc:ploc+4] = struct.pack("<i", disp)
  return bytes(image)

def _load(self, lib:bytes, base:int=0) -> bytes:
  if lib[:4] != libc.ELFMAG.encode(): return lib
  loaded = x86_64_jit_loader(lib, base, [self.libm, self.rt_lib])
  # CPUProgram maps len(lib) bytes for the image; the object file's headers and tables leave room for the stubs
  if len(loaded) > len(lib): raise RuntimeError(f"kernel {self.name}: linked image ({len(loaded)} bytes) exceeds its mapping ({len(lib)})")
  return loaded

def install() -> None:
  """Link CPU kernels with far-call trampolines on x86-64 (the bug above); elsewhere tinygrad's loader stays."""
  if platform.machine().lower() in ("x86_64", "amd64") and CPUProgram._load is not _load: CPUProgram._load = _load
