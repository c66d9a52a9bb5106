"""EmuFile: an emulated open /dev/accel/accelN of the mainline `rocket` driver (Linux 6.18).

It takes the very request numbers and struct bytes of tinygrad_rocket/ioctl/uapi.py, validates them as
the kernel does and answers with the kernel's errno (rocket_hw.md §1.4, drivers/accel/rocket/rocket_gem.c,
rocket_job.c, drm_ioctl.c, drm_gem.c). Deliberate differences, each for an observable failure instead of a
silent one:
- SUBMIT: the kernel drops a malformed job (task_count 0, regcmd_count 0, task_struct_size < 8, unknown
  handle) and still returns 0; we raise its errno and queue none of the submission's jobs (all jobs are
  validated first). The driver layer validates locally anyway.
- A failed job (hang, IOMMU fault): the kernel times it out after 500 ms, resets the core and only logs it;
  we fail it at once and PREP_BO on its out BOs raises EIO until a later job writing the BO succeeds.
- Unknown request numbers raise ENOTTY (drm_ioctl matches on the nr alone and answers EINVAL).
User pointers (SUBMIT's arrays, VERSION's strings) are addresses in this process, read and written with
ctypes as copy_from_user/copy_to_user would; NULL (or the zero page) with a non-zero length is EFAULT, except
for VERSION's string buffers, where drm_copy_field skips a NULL buffer (`if (len && buf)`) and only sets the length.
Pointers that are non-NULL but unmapped cannot be detected from Python: they crash the process, as a bug should.
"""
from __future__ import annotations
import collections, contextlib, ctypes, errno, mmap, os, sys, threading, time, traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from tinygrad_rocket.ioctl import uapi
from tinygrad_rocket.emu.memory import IovaSpace, IovaSpaceExhausted, IommuFault, PAGE_SIZE, page_round
from tinygrad_rocket.emu.cost import JobStats
from tinygrad_rocket.emu.core import (NPU, Npu, Core, Counters, HangError, BlockExecutionNotImplemented, RESET_REGISTERS_ON_HANG,
                                      PC_OPERATION_ENABLE, PC_BASE_ADDRESS, PC_REGISTER_AMOUNTS, PC_INTERRUPT_MASK,
                                      PC_INTERRUPT_CLEAR, PC_TASK_CON, PC_TASK_DMA_BASE_ADDR, CNA_S_POINTER, CORE_S_POINTER)

# DRM_FILE_PAGE_OFFSET_START (include/drm/drm_vma_manager.h, 64-bit): fake mmap offsets start above 4 GiB.
DRM_FILE_PAGE_OFFSET_START = 1 << 32
DRIVER_NAME, DRIVER_DATE, DRIVER_DESC = b"rocket", b"0", b"rocket DRM"  # date: "0" since drm removed driver dates (6.14)
DRIVER_VERSION = (0, 0, 0)                                                 # rocket_hw.md §1.1
# Anonymous BO memory is reserved lazily (a 4 GiB BO costs nothing until touched). asm-generic MAP_NORESERVE,
# which x86_64 and arm64 use; Python 3.11's mmap module does not export it.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
# Pointers at or above this are not user addresses on 48-bit-VA x86_64/arm64 (access_ok fails: EFAULT).
USER_ADDRESS_LIMIT = 1 << 48

# Emulator speed: an idle job worker waits this long for the next job before exiting (starting a thread per job costs
# more than a small job's emulation); a file nobody closes still leaves no thread behind.
WORKER_LINGER_S = 0.1

# rocket_job_hw_submit's per-task MMIO values (rocket_hw.md §2.3)
PC_SEL_SLAVE = 0x1                          # BASE_ADDRESS = 1 first: registers through AHB
S_POINTER_PP = 0xE                          # POINTER_PP_EN | EXECUTER_PP_EN | POINTER_PP_MODE
S_POINTER_CORE_STRIDE = 0x1000_0000         # | 0x10000000 * core index ("from rknpu")
DPU_IRQS = 0x300                            # DPU_0 (bit 8) | DPU_1 (bit 9)
TASK_CON_ONE_TASK = 0x7001                  # RESERVED_0 | TASK_COUNT_CLEAR | TASK_PP_EN | TASK_NUMBER=1
ALL_IRQS = 0x1FFFF                          # the IRQ thread clears all 17 interrupt sources

def _err(code:int, detail:str="") -> OSError: return OSError(code, os.strerror(code) + (f" ({detail})" if detail else ""))

def copy_from_user(addr:int|None, n:int) -> bytes:
  if n == 0: return b""
  if not addr or addr < PAGE_SIZE or addr + n > USER_ADDRESS_LIMIT: raise _err(errno.EFAULT, f"bad user pointer {addr or 0:#x}")
  return ctypes.string_at(addr, n)

def copy_to_user(addr:int|None, data:bytes) -> None:
  if not data: return
  if not addr or addr < PAGE_SIZE or addr + len(data) > USER_ADDRESS_LIMIT: raise _err(errno.EFAULT, f"bad user pointer {addr or 0:#x}")
  ctypes.memmove(addr, data, len(data))

class Fence:
  """A job's "finished" fence: signalled once, with an error reason if the job failed."""
  def __init__(self):
    self._done = threading.Event()
    self.error: str|None = None
  def signal(self, error:str|None) -> None: self.error = error; self._done.set()
  def signaled(self) -> bool: return self._done.is_set()
  def wait(self, timeout_s:float|None) -> bool: return self._done.wait(timeout_s)

@dataclass(eq=False)
class EmuBo:
  handle: int
  size: int                       # as asked for
  mem: mmap.mmap                  # page-rounded anonymous memory: the BO's pages
  iova: int
  mmap_offset: int
  refs: int = 1                   # the handle + one per queued job listing it (drm_gem_objects_lookup takes a reference)
  write_fence: Fence|None = None  # latest job that writes it
  fault: str|None = None          # reason of the last failed writer, until a later writer succeeds
  @property
  def pages_size(self) -> int: return page_round(self.size)

@dataclass(eq=False)
class EmuJob:
  tasks: list[tuple[int, int]]
  in_bos: list[EmuBo]
  out_bos: list[EmuBo]
  fence: Fence = field(default_factory=Fence)
  stats: Any = None               # cost.JobStats: the job's counters (tasks, MACs, DMA bytes, modeled time), once run

def hw_submit_task(core:Core, regcmd:int, regcmd_count:int) -> None:
  """rocket_job_hw_submit (§2.3) in its order; the last write starts the PC, which runs the list to completion."""
  core.mmio_write(PC_BASE_ADDRESS, PC_SEL_SLAVE)
  s_pointer = S_POINTER_PP | (S_POINTER_CORE_STRIDE * core.index)
  core.mmio_write(CNA_S_POINTER, s_pointer)
  core.mmio_write(CORE_S_POINTER, s_pointer)
  core.mmio_write(PC_BASE_ADDRESS, regcmd)
  core.mmio_write(PC_REGISTER_AMOUNTS, (regcmd_count + 1) // 2 - 1)  # PC_DATA_AMOUNT: 16-byte beats minus one
  core.mmio_write(PC_INTERRUPT_MASK, DPU_IRQS)
  core.mmio_write(PC_INTERRUPT_CLEAR, DPU_IRQS)
  core.mmio_write(PC_TASK_CON, TASK_CON_ONE_TASK)
  core.mmio_write(PC_TASK_DMA_BASE_ADDR, 0)
  core.mmio_write(PC_OPERATION_ENABLE, 1)

def irq_thread_task_done(core:Core) -> None:
  """rocket_job_irq_handler_thread (§2.4): stop the PC and clear every interrupt source."""
  core.mmio_write(PC_OPERATION_ENABLE, 0)
  core.mmio_write(PC_INTERRUPT_CLEAR, ALL_IRQS)

class EmuFile:
  """An emulated /dev/accel/accel0 file: ioctl(request, arg), mmap(length, offset), close()."""
  path = "<rocket emulator>"

  def __init__(self, npu:Npu=NPU):
    self.mem = IovaSpace()                  # this file's IOMMU domain
    self.core: Core = npu.pick_core()
    self.counters = Counters()
    self.stats = JobStats(jobs=0)           # counters of every job run on this file (tinygrad_rocket/emu/cost.py)
    self.job_stats: collections.deque[JobStats] = collections.deque(maxlen=1024)  # the latest jobs' counters, oldest first
    self._bos: dict[int, EmuBo] = {}
    self._by_offset: dict[int, EmuBo] = {}
    self._next_handle, self._next_offset = 1, DRM_FILE_PAGE_OFFSET_START  # GEM handles start at 1 (idr_alloc(.., 1, 0))
    self._lock = threading.Lock()           # handle table, BO refs and fault state
    self._cv = threading.Condition()        # job queue, hold count, worker
    self._queue: collections.deque[EmuJob] = collections.deque()
    self._worker: threading.Thread|None = None
    self._held, self._closing, self.closed = 0, False, False
    self._running = False                   # a job of this file is executing (on the worker or on a waiter, _run_queued)
    self._worker_blocked = False            # the worker waits for that job to end (then it is notified)
    self._last_submit = 0.0                 # time.monotonic() of the latest SUBMIT
    # Emulator speed, not semantics: with run_on_wait, SUBMIT does not wake the worker: the jobs run when a PREP_BO
    # waits for them forever (_run_queued, on the waiting thread), and otherwise when the worker next wakes, within
    # WORKER_LINGER_S. Waking a worker the waiter would only wait for costs two thread hand-offs per job, each up to a
    # scheduler time slice on a busy machine. The device sets it when it waits for every job right after submitting.
    self.run_on_wait = False
    self._handlers: dict[int, Callable[[Any], None]] = {
      uapi.DRM_IOCTL_VERSION: self._version, uapi.DRM_IOCTL_GEM_CLOSE: self._gem_close,
      uapi.DRM_IOCTL_ROCKET_CREATE_BO: self._create_bo, uapi.DRM_IOCTL_ROCKET_SUBMIT: self._submit,
      uapi.DRM_IOCTL_ROCKET_PREP_BO: self._prep_bo, uapi.DRM_IOCTL_ROCKET_FINI_BO: self._fini_bo,
    }

  def __repr__(self) -> str: return f"<EmuFile core={self.core.index} bos={len(self._bos)}{' closed' if self.closed else ''}>"

  # ---- the file interface ----
  def ioctl(self, request:int, arg:Any) -> int|bytes:
    """Like fcntl.ioctl(fd, request, arg, True): fills a mutable `arg` in place and returns 0 (an immutable one: returns
    the resulting bytes; an int: a pointer to the struct). Failures raise OSError with the kernel's errno."""
    if self.closed: raise _err(errno.EBADF)
    handler = self._handlers.get(request)
    if handler is None: raise _err(errno.ENOTTY)
    struct_t = uapi.IOCTL_STRUCTS[request]
    size, copy_out = ctypes.sizeof(struct_t), bool(uapi.ioc_dir(request) & uapi.IOC_READ)  # IOC_OUT: copied back
    if isinstance(arg, int):
      s = struct_t.from_buffer_copy(copy_from_user(arg, size))
      try: handler(s)
      finally:
        if copy_out: copy_to_user(arg, bytes(s))
      return 0
    view = memoryview(arg).cast("B")
    if view.nbytes < size: raise _err(errno.EFAULT, f"argument is {view.nbytes} bytes, the struct {size}")
    s = struct_t.from_buffer_copy(view[:size])
    try: handler(s)
    finally:
      if copy_out and not view.readonly: view[:size] = bytes(s)  # drm_ioctl copies IOC_OUT structs back even on error
    if view.readonly: return bytes(s) + bytes(view[size:])
    return 0

  def mmap(self, length:int, offset:int) -> memoryview:
    """The BO whose CREATE_BO fake offset is `offset`, as writable memory shared with the NPU (drm_gem_mmap rules)."""
    if self.closed: raise _err(errno.EBADF)
    with self._lock: bo = self._by_offset.get(offset)
    if bo is None: raise _err(errno.EINVAL, f"no BO at mmap offset {offset:#x}")
    if not 0 < length <= bo.pages_size: raise _err(errno.EINVAL, f"length {length} for a {bo.pages_size}-byte BO")
    return memoryview(bo.mem)[:length]

  def fault_reason(self, handle:int) -> str|None:
    """Why the last job writing this BO failed (None: it did not, or no such handle). Emulator-only."""
    with self._lock:
      bo = self._bos.get(handle)
      return bo.fault if bo is not None else None

  @contextlib.contextmanager
  def hold(self) -> Iterator[EmuFile]:
    """Test hook: queued jobs do not start while held, so their out BOs stay busy deterministically."""
    with self._cv: self._held += 1
    try: yield self
    finally:
      with self._cv:
        self._held -= 1
        self._cv.notify_all()

  def close(self) -> None:
    """Run every queued job to completion (ignoring hold), stop the worker, drop all handles."""
    if self.closed: return
    with self._cv:
      self._closing = True
      self._cv.notify_all()
      worker = self._worker
    if worker is not None: worker.join()
    with self._lock:
      for bo in self._bos.values(): self._unref(bo)
      self._bos.clear(); self._by_offset.clear()
    self.closed = True

  def __enter__(self) -> EmuFile: return self
  def __exit__(self, *exc) -> None: self.close()

  # ---- ioctls ----
  def _version(self, v:uapi.drm_version) -> None:
    v.version_major, v.version_minor, v.version_patchlevel = DRIVER_VERSION
    for name, value in (("name", DRIVER_NAME), ("date", DRIVER_DATE), ("desc", DRIVER_DESC)):
      # drm_copy_field: copy at most the user's length, report the real length, skip the copy for a NULL buffer
      n, ptr = min(getattr(v, f"{name}_len"), len(value)), getattr(v, name)
      setattr(v, f"{name}_len", len(value))
      if n and ptr: copy_to_user(ptr, value[:n])

  def _create_bo(self, a:uapi.drm_rocket_create_bo) -> None:
    if a.size == 0: raise _err(errno.EINVAL, "size 0")
    pages = page_round(a.size)
    try: mem = mmap.mmap(-1, pages, flags=mmap.MAP_SHARED | MAP_NORESERVE)
    except OSError: raise _err(errno.ENOMEM) from None
    with self._lock:
      try: iova = self.mem.map(mem, pages)
      except IovaSpaceExhausted: raise _err(errno.ENOMEM, "IOVA space exhausted") from None
      bo = EmuBo(self._next_handle, a.size, mem, iova, self._next_offset)
      self._next_handle += 1
      self._next_offset += pages
      self._bos[bo.handle], self._by_offset[bo.mmap_offset] = bo, bo
    a.handle, a.dma_address, a.offset = bo.handle, bo.iova, bo.mmap_offset

  def _lookup(self, handle:int, code:int=errno.ENOENT) -> EmuBo:
    with self._lock: bo = self._bos.get(handle)
    if bo is None: raise _err(code, f"no BO with handle {handle}")
    return bo

  def _unref(self, bo:EmuBo) -> None:
    """Drop one reference (caller holds _lock); the IOMMU mapping goes with the last one (rocket_hw.md §1.4)."""
    bo.refs -= 1
    if bo.refs == 0: self.mem.unmap(bo.iova)

  def _gem_close(self, a:uapi.drm_gem_close) -> None:
    with self._lock:
      bo = self._bos.pop(a.handle, None)
      if bo is None: raise _err(errno.EINVAL, f"no BO with handle {a.handle}")  # drm_gem_handle_delete
      del self._by_offset[bo.mmap_offset]
      self._unref(bo)

  def _prep_bo(self, a:uapi.drm_rocket_prep_bo) -> None:
    if a.reserved != 0: raise _err(errno.EINVAL, "reserved must be 0")
    bo = self._lookup(a.handle)
    # drm_timeout_abs_to_jiffies: 0, or a deadline not after now, means "poll"
    poll = a.timeout_ns == 0 or a.timeout_ns <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    fence = bo.write_fence
    if fence is not None and not fence.signaled():
      if poll: raise _err(errno.EBUSY)
      if a.timeout_ns >= uapi.INT64_MAX: self._run_queued(fence)
      while not fence.signaled():  # loop: never report ETIMEDOUT before the deadline has really passed
        remaining_s = (a.timeout_ns - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
        if remaining_s <= 0: raise _err(errno.ETIMEDOUT)
        fence.wait(None if remaining_s >= threading.TIMEOUT_MAX else remaining_s)
    # Emulator-only: the mainline kernel just logs a failed job; we report it here so failures are never silent.
    if bo.fault is not None: raise _err(errno.EIO, bo.fault)

  def _fini_bo(self, a:uapi.drm_rocket_fini_bo) -> None:
    if a.reserved != 0: raise _err(errno.EINVAL, "reserved must be 0")
    self._lookup(a.handle)  # the cache sync for the device is a no-op: CPU and emulated NPU share memory

  def _read_handles(self, ptr:int, count:int) -> list[EmuBo]:
    if count == 0: return []  # drm_gem_objects_lookup returns early
    raw = copy_from_user(ptr, 4 * count)
    return [self._lookup(h) for h in (int.from_bytes(raw[i:i+4], "little") for i in range(0, len(raw), 4))]

  def _submit(self, a:uapi.drm_rocket_submit) -> None:
    if a.job_count == 0: return
    if a.job_struct_size < ctypes.sizeof(uapi.drm_rocket_job): raise _err(errno.EINVAL, "job_struct_size too small")
    if a.reserved != 0: raise _err(errno.EINVAL, "reserved must be 0")
    job_size, task_size = ctypes.sizeof(uapi.drm_rocket_job), ctypes.sizeof(uapi.drm_rocket_task)
    cjobs = [uapi.drm_rocket_job.from_buffer_copy(copy_from_user(a.jobs + i * a.job_struct_size, job_size)) for i in range(a.job_count)]
    jobs: list[EmuJob] = []
    for j in cjobs:  # validate every job before queueing any (the kernel would drop bad ones one by one)
      if j.task_count == 0: raise _err(errno.EINVAL, "task_count 0")
      if j.task_struct_size < task_size: raise _err(errno.EINVAL, "task_struct_size too small")
      tasks = []
      for t in range(j.task_count):
        ct = uapi.drm_rocket_task.from_buffer_copy(copy_from_user(j.tasks + t * j.task_struct_size, task_size))
        if ct.regcmd_count == 0: raise _err(errno.EINVAL, "regcmd_count 0")
        tasks.append((ct.regcmd, ct.regcmd_count))
      jobs.append(EmuJob(tasks, self._read_handles(j.in_bo_handles, j.in_bo_handle_count),
                         self._read_handles(j.out_bo_handles, j.out_bo_handle_count)))
    with self._lock:
      for job in jobs:
        for bo in job.in_bos + job.out_bos: bo.refs += 1
        for bo in job.out_bos: bo.write_fence = job.fence  # the job's finished fence, usage WRITE
    with self._cv:
      self._queue.extend(jobs)
      self._last_submit = time.monotonic()
      if not self.run_on_wait: self._cv.notify_all()  # a lingering worker takes them
      if self._worker is None:
        self._worker = threading.Thread(target=self._work, name=f"rocket-emu-core{self.core.index}", daemon=True)
        self._worker.start()

  # ---- execution (one drm_sched entity per file: jobs run in submission order) ----
  def _work(self) -> None:
    while True:
      with self._cv:
        lingered = False
        while True:
          if self._held and not self._closing: self._cv.wait()
          elif self._running:                   # a waiter runs a job on its own thread (_run_queued): jobs stay in order
            self._worker_blocked = True
            self._cv.wait()
            self._worker_blocked = False
          elif self._queue and (lingered or self._closing or not self.run_on_wait): break
          elif self._closing or (lingered and time.monotonic() - self._last_submit >= WORKER_LINGER_S):
            self._worker = None  # exit when idle, so an unclosed file leaves no thread behind
            self._cv.notify_all()
            return
          else: lingered = not self._cv.wait(WORKER_LINGER_S)  # the next job often follows at once: no new thread
        job = self._queue.popleft()
        self._running = True
      self._run_one(job)

  def _run_one(self, job:EmuJob) -> None:
    try: self._run(job)
    finally:
      with self._cv:
        self._running = False
        if self._worker_blocked: self._cv.notify_all()

  def _run_queued(self, fence:Fence) -> None:
    """Emulator speed, not semantics: a PREP_BO that would wait forever for a job runs the queued jobs itself, in
    order, one at a time, while no job is running and the queue is not held; the worker thread runs them the same way.
    A waiter would sleep until the worker finished them anyway: this saves two thread hand-offs per job (each a whole
    scheduler time slice on a busy machine). A running job is waited for as before."""
    while not fence.signaled():
      with self._cv:
        if self._held or self._running or not self._queue: return
        job = self._queue.popleft()
        self._running = True
      self._run_one(job)

  def _run(self, job:EmuJob) -> None:
    error, done, core = None, 0, self.core
    with core.lock:
      core.attach(self.mem)
      job.stats = core.job_stats = JobStats()
      try:
        for t, (iova, count) in enumerate(job.tasks):
          where = f" [task {t}: regcmd IOVA {iova:#x}, {count} entries]"
          try:
            hw_submit_task(core, iova, count)
            irq_thread_task_done(core)
          except HangError as e: error = f"hang: {e}{where}"
          except IommuFault as e: error = f"IOMMU fault: {e}{where}"
          except BlockExecutionNotImplemented as e: error = f"{e}{where}"
          except Exception:  # a bug in the emulator, not a hardware failure: fail the job loudly, keep the worker alive
            error = f"emulator error (a bug, not a hardware fault){where}:\n{traceback.format_exc()}"
          if error is not None:
            if RESET_REGISTERS_ON_HANG and error.startswith(("hang", "IOMMU")): core.reset()
            break
          done += 1
      finally:
        core.detach()
        core.job_stats = None
      self.stats.merge(job.stats)
      self.job_stats.append(job.stats)
      for c in (core.counters, self.counters):
        c.tasks_completed += done
        c.tasks_failed += error is not None
        c.jobs_completed += error is None
        c.jobs_failed += error is not None
    with self._lock:
      for bo in job.out_bos: bo.fault = error  # jobs complete in order, so the latest writer's outcome sticks
      for bo in job.in_bos + job.out_bos: self._unref(bo)
    job.fence.signal(error)
