"""RocketDriver: the rocket UAPI as Python calls, over any file object with ioctl(request, arg) and mmap(length, offset).

That object is a DeviceFile (real /dev/accel/accelN) or tinygrad_rocket.emu.EmuFile: same struct bytes,
same request numbers. Semantics: ../shared/reference/rocket_hw.md §1.4.
"""
from __future__ import annotations
import ctypes, errno, time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence
from tinygrad_rocket.ioctl import uapi
from tinygrad_rocket.ioctl.errors import RocketIoctlError, JobValidationError, JobFailedError

PAGE_SIZE = 4096            # the IOMMU maps whole pages, so a BO's IOVA extent is page-rounded
REGCMD_ALIGN = 16           # the PC fetches 16-byte beats; low bits of BASE_ADDRESS are PC_SEL (rocket_hw.md §2.3)
REGCMD_ENTRY_BYTES = 8      # one u64 per regcmd entry (§3.1); the ioctl layer does not import regs/ (it sits below it)
IOVA_LIMIT = 1 << 32        # UAPI task.regcmd is a u32; the Rockchip IOMMU aperture is 32-bit (§2.1)

class DeviceFileLike(Protocol):
  def ioctl(self, request:int, arg:Any) -> int: ...
  def mmap(self, length:int, offset:int) -> Any: ...

@dataclass(eq=False)
class BufferObject:
  handle: int
  size: int               # bytes asked for (the kernel rounds the allocation up to a page)
  dma_address: int        # IOVA, valid only on this fd
  mmap_offset: int        # fake offset CREATE_BO returned
  mapping: Any            # mmap.mmap (real fd) or the emulator's buffer
  va_addr: int            # CPU address of the mapping, for code that runs on it in place
  view: memoryview        # writable bytes of the mapping
  @property
  def iova_end(self) -> int: return self.dma_address + -(-self.size // PAGE_SIZE) * PAGE_SIZE

@dataclass(frozen=True)
class Job:
  tasks: Sequence[tuple[int, int]]      # (regcmd IOVA, regcmd_count) per task, run back to back on one core
  in_handles: Sequence[int] = ()        # BOs the job reads
  out_handles: Sequence[int] = ()       # BOs the job writes: their write fence is the job's completion

def _call(file:DeviceFileLike, request:int, arg:Any) -> int:
  try: return file.ioctl(request, arg)
  except RocketIoctlError: raise
  except OSError as e: raise RocketIoctlError(uapi.ioctl_name(request), e.errno) from None

def _read_c_string(buf:ctypes.Array, n:int) -> str: return bytes(buf[:n]).decode(errors="replace")

def drm_driver_name(file:DeviceFileLike) -> str:
  """DRM_IOCTL_VERSION twice, as libdrm does: first to learn the lengths, then with buffers that fit."""
  v = uapi.drm_version()
  _call(file, uapi.DRM_IOCTL_VERSION, v)
  bufs = [ctypes.create_string_buffer(max(n, 1)) for n in (v.name_len, v.date_len, v.desc_len)]
  v.name, v.date, v.desc = (ctypes.addressof(b) for b in bufs)
  _call(file, uapi.DRM_IOCTL_VERSION, v)
  return _read_c_string(bufs[0], v.name_len)

def _cpu_address(buf:Any) -> int:
  anchor = ctypes.c_char.from_buffer(buf)  # needs a writable buffer; dropped at once so the mapping can close
  try: return ctypes.addressof(anchor)
  finally: del anchor

def _release(obj:Any) -> None:
  """Drop a mapping/view; if something still exports it, the memory lives until that is collected (like munmap later)."""
  try: obj.release() if isinstance(obj, memoryview) else obj.close()
  except BufferError: pass

class RocketDriver:
  def __init__(self, file:DeviceFileLike):
    self.file = file
    self.bos: dict[int, BufferObject] = {}

  def _ioctl(self, request:int, arg:Any) -> int: return _call(self.file, request, arg)

  def driver_name(self) -> str: return drm_driver_name(self.file)

  # ---- buffers ----
  def create_bo(self, size:int) -> BufferObject:
    if not 0 < size <= uapi.U32_MAX:
      raise ValueError(f"BO size {size} is not in 1..{uapi.U32_MAX}: drm_rocket_create_bo.size is a u32 (split the buffer)")
    args = uapi.drm_rocket_create_bo(size=size)
    self._ioctl(uapi.DRM_IOCTL_ROCKET_CREATE_BO, args)
    try: mapping = self.file.mmap(size, args.offset)
    except OSError:
      self._ioctl(uapi.DRM_IOCTL_GEM_CLOSE, uapi.drm_gem_close(handle=args.handle))
      raise
    view = memoryview(mapping).cast("B")
    bo = BufferObject(args.handle, size, args.dma_address, args.offset, mapping, _cpu_address(view), view)
    self.bos[bo.handle] = bo
    return bo

  def prep_bo(self, handle:int, timeout_s:float|None=None) -> None:
    """Begin CPU access: wait for the BO's last writer. None waits forever, 0 (or less) polls, else waits timeout_s."""
    if timeout_s is None: deadline = uapi.INT64_MAX  # as Mesa
    elif timeout_s <= 0: deadline = 0                # 0 = poll in drm_timeout_abs_to_jiffies
    else: deadline = min(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(timeout_s * 1e9), uapi.INT64_MAX)
    args = uapi.drm_rocket_prep_bo(handle=handle, reserved=0, timeout_ns=deadline)
    try: self._ioctl(uapi.DRM_IOCTL_ROCKET_PREP_BO, args)  # 6.18.0 may return positive jiffies: any ret >= 0 is success
    except RocketIoctlError as e:
      if e.errno != errno.EIO: raise
      reason_of = getattr(self.file, "fault_reason", None)
      raise JobFailedError(handle, reason_of(handle) if reason_of is not None else None) from None

  def fini_bo(self, handle:int) -> None:
    self._ioctl(uapi.DRM_IOCTL_ROCKET_FINI_BO, uapi.drm_rocket_fini_bo(handle=handle, reserved=0))

  def close_bo(self, bo:BufferObject) -> None:
    _release(bo.view); _release(bo.mapping)
    self.bos.pop(bo.handle, None)
    self._ioctl(uapi.DRM_IOCTL_GEM_CLOSE, uapi.drm_gem_close(handle=bo.handle))

  def close(self) -> None:
    for bo in list(self.bos.values()): _release(bo.view); _release(bo.mapping)
    self.bos.clear()
    self.file.close()  # closing the fd frees every handle, as the kernel does

  # ---- jobs ----
  def validate_job(self, i:int, job:Job) -> None:
    """Everything the kernel would silently drop a job for, plus what would only fault or hang on the device."""
    def bad(msg:str) -> JobValidationError: return JobValidationError(f"job {i}: {msg}")
    if len(job.tasks) == 0: raise bad("has no tasks (task_count 0)")
    if len(job.tasks) > uapi.U32_MAX: raise bad("too many tasks")
    for t, (iova, count) in enumerate(job.tasks):
      if not 0 <= iova < IOVA_LIMIT: raise bad(f"task {t}: regcmd IOVA {iova:#x} is not a u32")
      if iova % REGCMD_ALIGN: raise bad(f"task {t}: regcmd IOVA {iova:#x} is not {REGCMD_ALIGN}-byte aligned (the PC fetches 16-byte beats)")
      if not 0 < count <= uapi.U32_MAX: raise bad(f"task {t}: regcmd_count {count} is not in 1..{uapi.U32_MAX}")
      # the PC fetches the count rounded up to an even number of entries (kernel PC_DATA_AMOUNT = (n+1)/2 - 1)
      end = iova + REGCMD_ENTRY_BYTES * (count + (count & 1))
      if not any(bo.dma_address <= iova and end <= bo.iova_end for bo in self.bos.values()):
        raise bad(f"task {t}: regcmd list [{iova:#x}, {end:#x}) is not inside one BO of this driver")
    for kind, handles in (("in", job.in_handles), ("out", job.out_handles)):
      for h in handles:
        if h not in self.bos: raise bad(f"{kind} handle {h} was not created by this driver (or is closed)")
    if len(job.out_handles) == 0: raise bad("has no out handles: nothing could wait for its completion")
    if both := set(job.in_handles) & set(job.out_handles):
      # rocket_fp16_ew_ppu.md §6.A [HW]: such a job "completes" having executed nothing.
      raise bad(f"handles {sorted(both)} are in both in_handles and out_handles: list a BO the job reads and writes only as out")

  def submit(self, jobs:Sequence[Job]) -> None:
    """One SUBMIT for all jobs; they run in order on this fd's core. Completion: prep_bo on an out BO."""
    for i, job in enumerate(jobs): self.validate_job(i, job)
    if not jobs: return
    keepalive: list[ctypes.Array] = []  # the kernel reads these through user pointers during the ioctl

    def u32_array(values:Sequence[int]) -> int:
      if not values: return 0
      arr = (ctypes.c_uint32 * len(values))(*values)
      keepalive.append(arr)
      return ctypes.addressof(arr)

    job_arr = (uapi.drm_rocket_job * len(jobs))()
    for cj, job in zip(job_arr, jobs):
      tasks = (uapi.drm_rocket_task * len(job.tasks))(*(uapi.drm_rocket_task(iova, count) for iova, count in job.tasks))
      keepalive.append(tasks)
      cj.tasks, cj.task_count, cj.task_struct_size = ctypes.addressof(tasks), len(job.tasks), ctypes.sizeof(uapi.drm_rocket_task)
      cj.in_bo_handles, cj.in_bo_handle_count = u32_array(job.in_handles), len(job.in_handles)
      cj.out_bo_handles, cj.out_bo_handle_count = u32_array(job.out_handles), len(job.out_handles)
    args = uapi.drm_rocket_submit(jobs=ctypes.addressof(job_arr), job_count=len(jobs),
                                  job_struct_size=ctypes.sizeof(uapi.drm_rocket_job), reserved=0)
    self._ioctl(uapi.DRM_IOCTL_ROCKET_SUBMIT, args)
    del keepalive, job_arr
