"""Kernel loading on x86-64 (tinygrad_rocket/cpu_loader.py): a kernel linked more than 2 GiB below the library it calls
still calls the right function (tinygrad's own loader truncates the displacement: a SIGSEGV in long test sessions)."""
import ctypes, math, mmap, platform, struct
import pytest
from tinygrad_rocket._tg import CPUProgram, elf_loader, libc
from tinygrad_rocket import cpu_loader
from tinygrad.runtime.support.compiler_cpu import ClangCompiler
from tinygrad.runtime.support.elf import jit_loader

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 relocations")

SRC = "float expf(float);\nfloat call_expf(float x) { return expf(x) * 2.0f; }\n"   # not a tail call: returns through us
MAP_FIXED_NOREPLACE = 0x100000   # Linux >= 4.17: map exactly there or fail, never over an existing mapping
FAR = 3 << 30                    # beyond a 32-bit displacement's 2 GiB reach

def _obj() -> bytes: return ClangCompiler(["x86_64", "native"]).compile(SRC)
def _libs() -> list: return [CPUProgram.libm, CPUProgram.rt_lib]
def _expf() -> int: return ctypes.cast(CPUProgram.libm.expf, ctypes.c_void_p).value

def _plt_sites(obj:bytes) -> list[tuple[int, int, int]]:
  return [(ploc, tgt, addend) for ploc, tgt, r_type, addend in elf_loader(obj, link_libs=_libs())[2] if r_type == libc.R_X86_64_PLT32]

def test_near_calls_link_as_tinygrad_does():
  obj = _obj()
  assert _plt_sites(obj), "the call to expf is not a PLT32 relocation: the test would not exercise the loader"
  base = _expf() - (1 << 20)     # 1 MiB away: in range
  assert cpu_loader.x86_64_jit_loader(obj, base, _libs()) == jit_loader(obj, base=base, link_libs=_libs())

def test_far_call_goes_through_a_stub():
  obj, base = _obj(), _expf() - FAR
  image = cpu_loader.x86_64_jit_loader(obj, base, _libs())
  for ploc, tgt, addend in _plt_sites(obj):
    assert tgt == _expf()
    stub = ploc - addend + struct.unpack_from("<i", image, ploc)[0]   # S = P + disp - A, as an image offset
    assert image[stub:stub + 6] == cpu_loader.JMP_RIP_INDIRECT and struct.unpack_from("<Q", image, stub + 6)[0] == tgt
  # tinygrad's loader writes a displacement that does not reach the target
  bad = jit_loader(obj, base=base, link_libs=_libs())
  ploc, tgt, addend = _plt_sites(obj)[0]
  assert base + ploc - addend + struct.unpack_from("<i", bad, ploc)[0] != tgt

def _map_far_below(target:int, size:int) -> int|None:
  """An RWX anonymous mapping more than FAR below `target`, or None if no address there is free."""
  c = ctypes.CDLL(None, use_errno=True)
  c.mmap.restype, c.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
  flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
  for k in range(16):
    want = (target - FAR - k * (1 << 28)) & ~(mmap.PAGESIZE - 1)
    got = c.mmap(want, size, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC, flags, -1, 0)
    if got == want: return got
    if got not in (None, ctypes.c_void_p(-1).value): c.munmap(ctypes.c_void_p(got), ctypes.c_size_t(size))
  return None

def test_far_kernel_runs():
  obj, size = _obj(), mmap.PAGESIZE
  if (base := _map_far_below(_expf(), size)) is None: pytest.skip("no free address 3 GiB below libm")
  try:
    image = cpu_loader.x86_64_jit_loader(obj, base, _libs())
    assert len(image) <= len(obj)   # what CPUProgram maps
    ctypes.memmove(base, image, len(image))
    fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_float)(base)   # the image starts with the function (as CPUProgram calls it)
    for x in (0.0, 1.0, -2.5, 3.25):
      assert fn(x) == pytest.approx(2 * math.exp(x), rel=1e-6)
  finally: ctypes.CDLL(None).munmap(ctypes.c_void_p(base), ctypes.c_size_t(size))

def test_installed_for_every_cpu_program():
  import tinygrad_rocket  # noqa: F401  (installs it)
  assert CPUProgram._load is cpu_loader._load
