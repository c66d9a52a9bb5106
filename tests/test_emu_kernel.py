"""The emulated rocket kernel driver (tinygrad_rocket.emu.EmuFile) through raw ioctls, and its IOVA space and NPU cores."""
from __future__ import annotations
import ctypes, errno, struct, sys, threading, time
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad_rocket.ioctl import uapi
from tinygrad_rocket.emu import EmuFile, IovaSpace, IommuFault, IovaSpaceExhausted, Npu, HangError, PAGE_SIZE, decode_regcmd
from tinygrad_rocket.emu import core as emu_core
from tinygrad_rocket.regs.entry import (pack_entry, op_enable_entry, MARKER_ENTRY, TARGET_PC, TARGET_CNA, TARGET_CORE,
                                        TARGET_DPU, TARGET_DPU_RDMA, TARGET_PPU, TARGET_PPU_RDMA)

def now_ns() -> int: return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
class oserr:
  """pytest.raises(OSError) that also checks the errno."""
  def __init__(self, code:int): self.code = code
  def __enter__(self):
    self.cm = pytest.raises(OSError)
    self.info = self.cm.__enter__()
    return self.info
  def __exit__(self, *exc) -> bool:
    r = self.cm.__exit__(*exc)
    if not r: return False   # another exception type: let it propagate
    assert self.info.value.errno == self.code, f"errno {self.info.value.errno} ({self.info.value}), expected {self.code}"
    return r

CONV = 0x1D  # Mesa's convolution op-enable mask (rocket_hw.md §3.1)
def good_list(*writes:tuple[int, int, int], mask:int=CONV) -> list[int]:
  return [pack_entry(t, v, o) for t, v, o in writes] + [0, MARKER_ENTRY, op_enable_entry(mask)]

@pytest.fixture
def npu() -> Npu: return Npu()  # private cores: tests plug executors and read registers without touching the global NPU

@pytest.fixture
def emu(npu:Npu):
  f = EmuFile(npu=npu)
  yield f
  f.close()

class Recorder:
  def __init__(self): self.calls: list[tuple[int, int, dict[int, int]]] = []
  def __call__(self, core, mask, mem): self.calls.append((core.index, mask, dict(core.regs)))

@pytest.fixture
def rec(npu:Npu) -> Recorder:
  r = Recorder()
  npu.set_executor(r)
  return r

# ---- raw ioctl helpers (ctypes structs; bytearray variants are tested explicitly) ----
def create(f:EmuFile, size:int) -> uapi.drm_rocket_create_bo:
  a = uapi.drm_rocket_create_bo(size=size)
  assert f.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, a) == 0
  return a

def write_words(f:EmuFile, bo:uapi.drm_rocket_create_bo, words:list[int], at:int=0) -> None:
  m = f.mmap(bo.size, bo.offset)
  m[at:at + 8 * len(words)] = struct.pack(f"<{len(words)}Q", *words)

def prep(f:EmuFile, handle:int, timeout_ns:int=uapi.INT64_MAX, reserved:int=0) -> int:
  return f.ioctl(uapi.DRM_IOCTL_ROCKET_PREP_BO, uapi.drm_rocket_prep_bo(handle=handle, reserved=reserved, timeout_ns=timeout_ns))

def submit(f:EmuFile, job_list:list[dict], **over) -> int:
  """job_list: dicts with tasks [(iova, count)], ins, outs, and raw drm_rocket_job field overrides as set_<field>."""
  keep = []
  def arr(ctype, items):
    a = (ctype * len(items))(*items); keep.append(a)
    return ctypes.addressof(a) if items else 0
  cj = (uapi.drm_rocket_job * max(len(job_list), 1))()
  for c, j in zip(cj, job_list):
    tasks = [uapi.drm_rocket_task(*t) for t in j.get("tasks", [])]
    c.tasks, c.task_count, c.task_struct_size = arr(uapi.drm_rocket_task, tasks), len(tasks), 8
    c.in_bo_handles, c.in_bo_handle_count = arr(ctypes.c_uint32, j.get("ins", [])), len(j.get("ins", []))
    c.out_bo_handles, c.out_bo_handle_count = arr(ctypes.c_uint32, j.get("outs", [])), len(j.get("outs", []))
    for k, v in j.items():
      if k.startswith("set_"): setattr(c, k[4:], v)
  s = uapi.drm_rocket_submit(jobs=ctypes.addressof(cj), job_count=len(job_list), job_struct_size=40)
  for k, v in over.items(): setattr(s, k, v)
  return f.ioctl(uapi.DRM_IOCTL_ROCKET_SUBMIT, s)

def one_job(f:EmuFile, words:list[int], size:int=4096, count:int|None=None) -> tuple[uapi.drm_rocket_create_bo, uapi.drm_rocket_create_bo]:
  """A regcmd BO holding `words` and an out BO; submits one single-task job. Returns (regcmd bo, out bo)."""
  rc, out = create(f, size), create(f, 4096)
  write_words(f, rc, words)
  submit(f, [dict(tasks=[(rc.dma_address, count or len(words))], ins=[rc.handle], outs=[out.handle])])
  return rc, out

# ---------------------------------------------------------------- BOs, IOVA, mmap
def test_first_bo_gets_iova_0_and_bos_are_page_aligned(emu):
  a, b, c = create(emu, 1), create(emu, PAGE_SIZE + 1), create(emu, 100)
  assert a.dma_address == 0 and b.dma_address == PAGE_SIZE and c.dma_address == 3 * PAGE_SIZE
  assert len({a.handle, b.handle, c.handle}) == 3 and min(a.handle, b.handle, c.handle) >= 1
  offsets = [a.offset, b.offset, c.offset]
  assert len(set(offsets)) == 3 and all(o >= 1 << 32 and o % PAGE_SIZE == 0 for o in offsets)

def test_create_bo_bytearray_and_size_0(emu):
  buf = bytearray(struct.pack("<IIQQ", 5000, 0, 0, 0))
  assert emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, buf) == 0
  size, handle, iova, offset = struct.unpack("<IIQQ", buf)
  assert (size, iova) == (5000, 0) and handle >= 1 and offset >= 1 << 32
  with oserr(errno.EINVAL): emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, bytearray(24))

def test_mmap_iova_round_trip(emu):
  create(emu, 3 * PAGE_SIZE)
  bo = create(emu, 10000)
  m = emu.mmap(10000, bo.offset)
  m[0:5] = b"hello"; m[9995:10000] = b"world"
  assert emu.mem.read(bo.dma_address, 5) == b"hello" and emu.mem.read(bo.dma_address + 9995, 5) == b"world"
  emu.mem.write(bo.dma_address + 100, b"\x01\x02\x03")
  assert bytes(m[100:103]) == b"\x01\x02\x03"
  arr = emu.mem.ndarray(bo.dma_address + 100, np.uint8, 3, writable=True)
  arr[:] = 7
  assert bytes(m[100:103]) == b"\x07\x07\x07"
  # the CPU address of the mapping works in place, as tinygrad's CPU fallback kernels use it
  addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
  ctypes.memmove(addr + 200, b"xyz", 3)
  assert emu.mem.read(bo.dma_address + 200, 3) == b"xyz"

def test_mmap_errors(emu):
  bo = create(emu, 100)
  assert len(emu.mmap(PAGE_SIZE, bo.offset)) == PAGE_SIZE      # up to the page-rounded size
  with oserr(errno.EINVAL): emu.mmap(PAGE_SIZE + 1, bo.offset)
  with oserr(errno.EINVAL): emu.mmap(100, bo.offset + PAGE_SIZE)
  with oserr(errno.EINVAL): emu.mmap(0, bo.offset)

def test_gem_close_then_enoent_and_iova_reuse(emu):
  a, b = create(emu, PAGE_SIZE), create(emu, PAGE_SIZE)
  close = uapi.drm_gem_close(handle=a.handle)
  assert emu.ioctl(uapi.DRM_IOCTL_GEM_CLOSE, close) == 0
  with oserr(errno.EINVAL): emu.ioctl(uapi.DRM_IOCTL_GEM_CLOSE, close)              # drm_gem_handle_delete
  with oserr(errno.ENOENT): prep(emu, a.handle)
  with oserr(errno.ENOENT): emu.ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, uapi.drm_rocket_fini_bo(handle=a.handle))
  with oserr(errno.EINVAL): emu.mmap(PAGE_SIZE, a.offset)
  with oserr(errno.ENOENT): submit(emu, [dict(tasks=[(b.dma_address, 4)], outs=[a.handle])])
  with pytest.raises(IommuFault): emu.mem.read(0, 1)
  c = create(emu, PAGE_SIZE)
  assert c.dma_address == 0 and c.handle not in (a.handle, b.handle)

def test_iova_space_exhaustion_enomem(emu):
  big = create(emu, uapi.U32_MAX)  # page-rounded: the whole 4 GiB aperture (memory is reserved lazily)
  assert big.dma_address == 0
  with oserr(errno.ENOMEM): create(emu, 1)
  emu.ioctl(uapi.DRM_IOCTL_GEM_CLOSE, uapi.drm_gem_close(handle=big.handle))
  assert create(emu, 1).dma_address == 0

def test_fini_bo(emu):
  bo = create(emu, 64)
  assert emu.ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, uapi.drm_rocket_fini_bo(handle=bo.handle)) == 0
  assert emu.ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, bytearray(struct.pack("<II", bo.handle, 0))) == 0
  with oserr(errno.EINVAL): emu.ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, uapi.drm_rocket_fini_bo(handle=bo.handle, reserved=1))
  with oserr(errno.ENOENT): emu.ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, uapi.drm_rocket_fini_bo(handle=999))

# ---------------------------------------------------------------- generic ioctl plumbing
def test_unknown_request_short_buffer_closed_file(emu):
  with oserr(errno.ENOTTY): emu.ioctl(0xC0186499, bytearray(24))
  with oserr(errno.ENOTTY): emu.ioctl(uapi._IOC(3, ord("d"), 0x40, 16), bytearray(24))  # right nr, wrong size
  with oserr(errno.EFAULT): emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, bytearray(23))
  with oserr(errno.EFAULT): emu.ioctl(uapi.DRM_IOCTL_ROCKET_PREP_BO, bytearray(8))
  f = EmuFile(npu=Npu()); f.close()
  with oserr(errno.EBADF): f.ioctl(uapi.DRM_IOCTL_VERSION, uapi.drm_version())

def test_pointer_and_readonly_arguments(emu):
  a = uapi.drm_rocket_create_bo(size=10)
  assert emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, ctypes.addressof(a)) == 0  # an int is a pointer, as in C
  assert a.handle >= 1
  out = emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, struct.pack("<IIQQ", 10, 0, 0, 0))  # immutable: returns bytes, like fcntl
  assert isinstance(out, bytes) and struct.unpack("<IIQQ", out)[2] == PAGE_SIZE
  with oserr(errno.EFAULT): emu.ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, 0)

def test_version_copy_semantics(emu):
  v = uapi.drm_version()
  assert emu.ioctl(uapi.DRM_IOCTL_VERSION, v) == 0   # lengths 0 and NULL pointers: only the lengths come back
  assert (v.name_len, v.date_len, v.desc_len) == (6, 1, 10)
  assert (v.version_major, v.version_minor, v.version_patchlevel) == (0, 0, 0)
  name, desc = ctypes.create_string_buffer(b"\xAA" * 8, 8), ctypes.create_string_buffer(64)
  v = uapi.drm_version(name_len=3, name=ctypes.addressof(name), desc_len=64, desc=ctypes.addressof(desc))
  emu.ioctl(uapi.DRM_IOCTL_VERSION, v)
  assert name.raw == b"roc" + b"\xAA" * 5 and v.name_len == 6     # at most name_len bytes, no terminator
  assert desc.raw[:11] == b"rocket DRM\0" and v.desc_len == 10
  fresh = ctypes.create_string_buffer(16)
  b = bytearray(bytes(uapi.drm_version(name_len=16, name=ctypes.addressof(fresh))))   # the struct as a bytearray
  emu.ioctl(uapi.DRM_IOCTL_VERSION, b)
  assert uapi.drm_version.from_buffer(b).name_len == 6 and fresh.value == b"rocket"
  v = uapi.drm_version(name_len=6)   # NULL buffer with a length: drm_copy_field skips the copy
  emu.ioctl(uapi.DRM_IOCTL_VERSION, v)
  assert v.name_len == 6
  with oserr(errno.EFAULT): emu.ioctl(uapi.DRM_IOCTL_VERSION, uapi.drm_version(name_len=6, name=16))

# ---------------------------------------------------------------- PREP_BO deadlines
@pytest.fixture
def busy(emu, rec):
  """A held file with one queued job whose out BO is therefore busy."""
  with emu.hold():
    _, out = one_job(emu, good_list())
    yield emu, out

def test_prep_poll_is_ebusy_while_held(busy):
  f, out = busy
  with oserr(errno.EBUSY): prep(f, out.handle, 0)
  with oserr(errno.EBUSY): prep(f, out.handle, now_ns() - 10**9)   # a past deadline also polls
  with oserr(errno.EBUSY): prep(f, out.handle, -5)
  with oserr(errno.EINVAL): prep(f, out.handle, 0, reserved=1)
  with oserr(errno.ENOENT): prep(f, 12345, 0)

def test_prep_near_future_deadline_times_out(busy):
  f, out = busy
  deadline = now_ns() + 30_000_000
  with oserr(errno.ETIMEDOUT): prep(f, out.handle, deadline)
  assert now_ns() >= deadline

def test_prep_forever_waits_until_released(emu, rec):
  results: list[object] = []
  with emu.hold():
    _, out = one_job(emu, good_list())
    t = threading.Thread(target=lambda: results.append(prep(emu, out.handle)))
    t.start()
    t.join(0.05)
    assert t.is_alive() and not results   # still waiting: the job cannot start while held
  t.join(30)
  assert results == [0] and len(rec.calls) == 1
  assert prep(emu, out.handle, 0) == 0    # idle now: a poll succeeds

def test_idle_bo_prep_succeeds(emu):
  bo = create(emu, 8)
  assert prep(emu, bo.handle, 0) == 0 and prep(emu, bo.handle) == 0
  assert emu.ioctl(uapi.DRM_IOCTL_ROCKET_PREP_BO, bytearray(struct.pack("<IIq", bo.handle, 0, 0))) == 0

# ---------------------------------------------------------------- SUBMIT validation
def test_submit_errnos(emu):
  rc, out = create(emu, 4096), create(emu, 4096)
  ok = dict(tasks=[(rc.dma_address, 4)], outs=[out.handle])
  assert submit(emu, [], jobs=0) == 0                                        # job_count 0: nothing is read
  with oserr(errno.EINVAL): submit(emu, [ok], job_struct_size=39)
  with oserr(errno.EINVAL): submit(emu, [ok], reserved=1)
  with oserr(errno.EFAULT): submit(emu, [ok], jobs=0)
  with oserr(errno.EINVAL): submit(emu, [dict(ok, set_task_count=0)])
  with oserr(errno.EINVAL): submit(emu, [dict(ok, set_task_struct_size=7)])
  with oserr(errno.EINVAL): submit(emu, [dict(ok, tasks=[(rc.dma_address, 0)])])
  with oserr(errno.EFAULT): submit(emu, [dict(ok, set_tasks=0)])                  # NULL tasks with task_count 1
  with oserr(errno.ENOENT): submit(emu, [dict(ok, ins=[777])])
  with oserr(errno.ENOENT): submit(emu, [dict(ok, outs=[777])])
  with oserr(errno.EFAULT): submit(emu, [dict(ok, set_out_bo_handles=0)])         # NULL with a count
  assert emu.counters.jobs_completed + emu.counters.jobs_failed == 0

def test_submit_with_larger_strides(emu, rec):
  rc, out = create(emu, 4096), create(emu, 4096)
  write_words(emu, rc, good_list())
  tasks = (ctypes.c_uint32 * 8)(rc.dma_address, 4, 0xDEAD, 0xBEEF, rc.dma_address, 4, 0, 0)  # stride 16
  outs = (ctypes.c_uint32 * 1)(out.handle)
  jobs = (ctypes.c_uint8 * 96)()   # stride 48: each job struct followed by 8 bytes of junk
  for i in range(2):
    j = uapi.drm_rocket_job(tasks=ctypes.addressof(tasks), task_count=2, task_struct_size=16,
                            out_bo_handles=ctypes.addressof(outs), out_bo_handle_count=1)
    ctypes.memmove(ctypes.addressof(jobs) + 48 * i, bytes(j) + b"\xff" * 8, 48)
  emu.ioctl(uapi.DRM_IOCTL_ROCKET_SUBMIT, uapi.drm_rocket_submit(jobs=ctypes.addressof(jobs), job_count=2, job_struct_size=48))
  assert prep(emu, out.handle) == 0 and len(rec.calls) == 4 and emu.counters.tasks_completed == 4

def test_a_bad_job_queues_none_of_the_submission(emu, rec):
  rc, out = create(emu, 4096), create(emu, 4096)
  write_words(emu, rc, good_list())
  with emu.hold():
    with oserr(errno.ENOENT):
      submit(emu, [dict(tasks=[(rc.dma_address, 4)], outs=[out.handle]), dict(tasks=[(rc.dma_address, 4)], outs=[99])])
    assert prep(emu, out.handle, 0) == 0   # not busy: the valid first job was not queued either
  emu.close()
  assert rec.calls == [] and emu.counters == emu_core.Counters()

# ---------------------------------------------------------------- execution
def test_well_formed_list_reaches_executor_with_registers(emu, rec, npu):
  words = good_list((TARGET_CNA, 0x1234, 0x1070), (TARGET_DPU, 0xCAFE, 0x4020), (TARGET_PPU_RDMA, 7, 0x701C), (TARGET_PC, 0, 0x0014))
  rc, out = one_job(emu, words)
  assert prep(emu, out.handle) == 0 and emu.fault_reason(out.handle) is None
  [(core, mask, regs)] = rec.calls
  assert core == emu.core.index and mask == CONV
  assert regs[0x1070] == 0x1234 and regs[0x4020] == 0xCAFE and regs[0x701C] == 7
  # the kernel's per-task MMIO (rocket_hw.md §2.3) is visible too
  assert regs[emu_core.CNA_S_POINTER] == regs[emu_core.CORE_S_POINTER] == 0xE | (core << 28)
  assert regs[emu_core.PC_TASK_CON] == 0x7001 and regs[emu_core.PC_INTERRUPT_MASK] == 0x300
  assert regs[emu_core.PC_REGISTER_AMOUNTS] == 0  # the list's own tail write lands after the kernel's (8+1)//2-1
  assert npu.cores[core].regs[emu_core.PC_OPERATION_ENABLE] == 0  # the IRQ thread stopped the PC
  assert emu.counters.jobs_completed == 1 and emu.counters.tasks_completed == 1

def test_register_state_persists_across_jobs_and_files(npu, rec):
  f = EmuFile(npu=npu)
  npu.pick_core(); npu.pick_core()  # the next file lands on the same core again (round robin over 3)
  g = EmuFile(npu=npu)
  assert f.core is g.core
  _, o1 = one_job(f, good_list((TARGET_CORE, 0x55, 0x3010), (TARGET_DPU_RDMA, 0x66, 0x5010)))
  prep(f, o1.handle)
  _, o2 = one_job(g, good_list((TARGET_CORE, 0x77, 0x3014)))
  prep(g, o2.handle)
  regs = rec.calls[1][2]
  assert regs[0x3010] == 0x55 and regs[0x5010] == 0x66 and regs[0x3014] == 0x77
  f.close(); g.close()

def test_round_robin_cores():
  npu = Npu()
  files = [EmuFile(npu=npu) for _ in range(4)]
  assert [f.core.index for f in files] == [0, 1, 2, 0]
  for f in files: f.close()

def test_jobs_run_in_submission_order(emu, rec):
  rc, out = create(emu, 4096), create(emu, 4096)
  lists = [good_list((TARGET_CNA, i, 0x1000 + 4 * i), mask=i + 1) for i in range(3)]
  for i, words in enumerate(lists): write_words(emu, rc, words, at=64 * i)
  submit(emu, [dict(tasks=[(rc.dma_address + 64 * i, 4)], ins=[rc.handle], outs=[out.handle]) for i in range(2)] +
              [dict(tasks=[(rc.dma_address + 128, 4), (rc.dma_address, 4)], ins=[rc.handle], outs=[out.handle])])
  assert prep(emu, out.handle) == 0
  assert [m for _, m, _ in rec.calls] == [1, 2, 3, 1]

def test_odd_count_fetches_a_padding_entry(emu, rec):
  words = [pack_entry(TARGET_CNA, 1, 0x1100), MARKER_ENTRY, op_enable_entry(CONV)]
  _, out = one_job(emu, words + [0], count=3)   # the PC fetches 4 entries; a zero 4th is a no-op
  assert prep(emu, out.handle) == 0
  _, out = one_job(emu, words + [pack_entry(TARGET_CNA, 2, 0x1104)], count=3)  # a non-zero 4th is executed
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("hang: regcmd list does not end in op-enable")

@pytest.mark.parametrize("words, why", [
  ([pack_entry(TARGET_CNA, 1, 0x1000), MARKER_ENTRY], "does not end in op-enable"),
  ([0, 0, 0, 0], "does not end in op-enable"),
  ([pack_entry(TARGET_CNA, 1, 0x1000), op_enable_entry(CONV)], "not directly preceded by the 0x0041 marker"),
  ([pack_entry(TARGET_DPU, 1, 0x1000), MARKER_ENTRY, op_enable_entry(CONV)], "DPU register write to offset 0x1000"),
  ([pack_entry(0x0401, 1, 0x2004), MARKER_ENTRY, op_enable_entry(CONV)], "unknown target 0x0401"),
])
def test_malformed_lists_fail_like_a_hang(emu, rec, words, why):
  _, out = one_job(emu, words)
  with oserr(errno.EIO): prep(emu, out.handle)
  reason = emu.fault_reason(out.handle)
  assert reason.startswith("hang: ") and why in reason
  assert rec.calls == [] and emu.counters.jobs_failed == 1 and emu.counters.tasks_failed == 1

def test_regcmd_outside_any_bo_is_an_iommu_fault(emu, rec):
  out = create(emu, 4096)
  submit(emu, [dict(tasks=[(0x10000, 4)], outs=[out.handle])])
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("IOMMU fault: PC read of 32 bytes at IOVA 0x10000 outside any BO")

def test_unaligned_regcmd_hangs(emu, rec):
  rc, out = create(emu, 4096), create(emu, 4096)
  write_words(emu, rc, [0] + good_list())
  submit(emu, [dict(tasks=[(rc.dma_address + 8, 4)], outs=[out.handle])])
  with oserr(errno.EIO): prep(emu, out.handle)
  assert "16-byte aligned" in emu.fault_reason(out.handle)

def test_executor_faults_fail_the_job_and_stick_until_a_good_write(emu, npu):
  mode = {"v": "iommu"}
  def executor(core, mask, mem):
    if mode["v"] == "iommu":
      mem.check(0x5000, 4096, "write", "DPU")
    if mode["v"] == "hang": raise HangError("MRDMA waits forever")
    if mode["v"] == "todo": raise NotImplementedError("PPU min pooling")
  npu.set_executor(executor)
  _, out = one_job(emu, good_list())
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("IOMMU fault: DPU write of 4096 bytes at IOVA 0x5000 outside any BO")
  with oserr(errno.EIO): prep(emu, out.handle, 0)          # sticks
  mode["v"] = "hang"
  rc = create(emu, 4096); write_words(emu, rc, good_list())
  submit(emu, [dict(tasks=[(rc.dma_address, 4)], outs=[out.handle])])
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("hang: MRDMA waits forever")
  mode["v"] = "todo"
  submit(emu, [dict(tasks=[(rc.dma_address, 4)], outs=[out.handle])])
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("block execution not implemented (mask 0x1d): PPU min pooling")
  mode["v"] = "ok"
  submit(emu, [dict(tasks=[(rc.dma_address, 4)], outs=[out.handle])])
  assert prep(emu, out.handle) == 0 and emu.fault_reason(out.handle) is None
  assert (emu.counters.jobs_failed, emu.counters.jobs_completed) == (3, 1)

def test_emulator_bug_fails_the_job_but_not_the_worker(emu, npu):
  calls = []
  def executor(core, mask, mem):
    calls.append(mask)
    if len(calls) == 1: raise ZeroDivisionError("oops")
  npu.set_executor(executor)
  _, out = one_job(emu, good_list())
  with oserr(errno.EIO): prep(emu, out.handle)
  assert "emulator error" in emu.fault_reason(out.handle) and "ZeroDivisionError" in emu.fault_reason(out.handle)
  _, out2 = one_job(emu, good_list())
  assert prep(emu, out2.handle) == 0 and calls == [CONV, CONV]

def test_default_executor_without_blocks_module(emu, monkeypatch):
  monkeypatch.setitem(sys.modules, "tinygrad_rocket.emu.blocks", None)  # as if blocks.py did not exist
  _, out = one_job(emu, good_list(mask=0x60))
  with oserr(errno.EIO): prep(emu, out.handle)
  assert emu.fault_reason(out.handle).startswith("block execution not implemented (mask 0x60)")

def test_hang_resets_the_core_registers(emu, rec, npu):
  _, out = one_job(emu, good_list((TARGET_CNA, 9, 0x1020)))
  prep(emu, out.handle)
  assert npu.cores[emu.core.index].regs[0x1020] == 9
  _, out = one_job(emu, [pack_entry(TARGET_CNA, 1, 0x1000)])
  with oserr(errno.EIO): prep(emu, out.handle)
  assert 0x1020 not in npu.cores[emu.core.index].regs   # the kernel's reset after the timeout (rocket_hw.md §2.5)

def test_dma_is_confined_to_the_files_own_bos(npu):
  f, g = EmuFile(npu=npu), EmuFile(npu=npu)
  a = create(f, 4096)
  f.mmap(4096, a.offset)[:4] = b"abcd"
  assert f.mem.read(0, 4) == b"abcd"
  with pytest.raises(IommuFault): g.mem.read(0, 4)
  f.close(); g.close()

def test_gem_close_during_a_queued_job_keeps_the_iova_mapped(emu, rec):
  with emu.hold():
    rc, out = one_job(emu, good_list())
    emu.ioctl(uapi.DRM_IOCTL_GEM_CLOSE, uapi.drm_gem_close(handle=rc.handle))  # the job still holds a reference
    assert create(emu, 4096).dma_address == 2 * PAGE_SIZE
  assert prep(emu, out.handle) == 0 and len(rec.calls) == 1
  with pytest.raises(IommuFault): emu.mem.read(rc.dma_address, 8)      # last reference gone: unmapped
  assert create(emu, 4096).dma_address == rc.dma_address

def test_close_drains_held_jobs_and_worker_exits_when_idle(npu, rec):
  f = EmuFile(npu=npu)
  with f.hold():
    for _ in range(3): one_job(f, good_list())
    f.close()
  assert len(rec.calls) == 3 and f.counters.jobs_completed == 3 and f._worker is None
  with oserr(errno.EBADF): f.mmap(4096, 1 << 32)
  g = EmuFile(npu=npu)
  _, out = one_job(g, good_list())
  prep(g, out.handle)
  for _ in range(1000):
    if g._worker is None: break
    time.sleep(0.001)
  assert g._worker is None   # no thread is left behind by a file nobody closes

def test_global_npu_and_executor_plumbing():
  f = EmuFile()
  assert f.core in emu_core.NPU.cores
  old = emu_core.NPU.set_executor(Recorder())
  try:
    _, out = one_job(f, good_list())
    assert prep(f, out.handle) == 0
  finally: emu_core.NPU.restore_executors(old)
  assert all(c.executor is emu_core.default_executor for c in emu_core.NPU.cores)
  f.close()

# ---------------------------------------------------------------- decoder and IOVA allocator units
def test_decode_regcmd_block_windows():
  for target, base in ((TARGET_PC, 0), (TARGET_CNA, 0x1000), (TARGET_CORE, 0x3000), (TARGET_DPU, 0x4000),
                       (TARGET_DPU_RDMA, 0x5000), (TARGET_PPU, 0x6000), (TARGET_PPU_RDMA, 0x7000)):
    decode_regcmd([pack_entry(target, 1, base), pack_entry(target, 1, base + 0xFFC), MARKER_ENTRY, op_enable_entry(1)])
    with pytest.raises(HangError): decode_regcmd([pack_entry(target, 1, base + 0x1000), MARKER_ENTRY, op_enable_entry(1)])
  with pytest.raises(HangError): decode_regcmd([pack_entry(TARGET_CNA, 1, 0x2000), MARKER_ENTRY, op_enable_entry(1)])  # no block at 0x2000
  entries = decode_regcmd([0, MARKER_ENTRY, op_enable_entry(0x18), 0, 0, 0])
  assert len(entries) == 3 and entries[-1].value == 0x18

def test_iova_space_reads_across_adjacent_bos_and_faults_on_gaps():
  s = IovaSpace(size=16 * PAGE_SIZE)
  a, b = bytearray(PAGE_SIZE), bytearray(2 * PAGE_SIZE)
  assert s.map(a, 10) == 0 and s.map(b, 2 * PAGE_SIZE) == PAGE_SIZE
  s.write(PAGE_SIZE - 2, b"wxyz")                       # spans two adjacent BOs: one contiguous IOMMU range
  assert a[-2:] == b"wx" and b[:2] == b"yz" and s.read(PAGE_SIZE - 2, 4) == b"wxyz"
  assert s.ndarray(PAGE_SIZE - 2, np.uint8, 4).tobytes() == b"wxyz"
  with pytest.raises(ValueError): s.view(PAGE_SIZE - 2, 4)
  with pytest.raises(IommuFault) as e: s.write(3 * PAGE_SIZE - 2, b"1234")   # runs past the last BO
  assert b[-2:] == b"\0\0" and e.value.nbytes == 4 and "write of 4 bytes at IOVA 0x2ffe" in str(e.value)
  for bad in ((-1, 1), (16 * PAGE_SIZE - 1, 2), (5 * PAGE_SIZE, 1)):
    with pytest.raises(IommuFault): s.check(*bad)
  s.check(5 * PAGE_SIZE, 0)   # zero bytes touch nothing
  with pytest.raises(IovaSpaceExhausted): s.map(bytearray(14 * PAGE_SIZE), 14 * PAGE_SIZE)
  s.unmap(0)
  with pytest.raises(KeyError): s.unmap(0)
  assert s.map(bytearray(PAGE_SIZE), 1) == 0

@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("map"), st.integers(1, 5 * PAGE_SIZE)), st.tuples(st.just("unmap"), st.integers(0, 50))),
                max_size=40))
def test_iova_allocator_first_fit_no_overlap(ops):
  space_pages = 64
  s = IovaSpace(size=space_pages * PAGE_SIZE)
  live: dict[int, int] = {}   # iova -> page-rounded size
  for op, arg in ops:
    if op == "map":
      size = -(-arg // PAGE_SIZE) * PAGE_SIZE
      # the model: lowest gap that fits
      at, expect = 0, None
      for iova in sorted(live):
        if iova - at >= size: break
        at = iova + live[iova]
      expect = at if at + size <= space_pages * PAGE_SIZE else None
      if expect is None:
        with pytest.raises(IovaSpaceExhausted): s.map(bytearray(size), arg)
        continue
      iova = s.map(bytearray(size), arg)
      assert iova == expect and iova % PAGE_SIZE == 0
      live[iova] = size
    elif live:
      iova = sorted(live)[arg % len(live)]
      s.unmap(iova); del live[iova]
    spans = sorted((m.iova, m.end) for m in s.mappings())
    assert spans == sorted((i, i + n) for i, n in live.items())
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))
