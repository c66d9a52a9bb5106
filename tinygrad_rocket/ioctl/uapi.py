"""The rocket accel UAPI (Linux 6.18 `include/uapi/drm/rocket_accel.h`) and the generic DRM ioctls we use.

Structs are ctypes data with the kernel's natural alignment; request numbers are computed the
asm-generic way (`include/uapi/asm-generic/ioctl.h`, which arm64 uses). Layouts and codes:
../shared/reference/rocket_hw.md §1.2-§1.3. The same bytes and numbers go to the real fd and to
the emulator (tinygrad_rocket/emu/kernel.py), so this module is the single definition of both.
"""
from __future__ import annotations
import ctypes

# asm-generic/ioctl.h: nr 8 bits @0, type 8 bits @8, size 14 bits @16, dir 2 bits @30.
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_SIZEBITS = 14
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2  # "write" = userspace writes to the kernel (copy_from_user)

def _IOC(dir:int, type:int, nr:int, size:int) -> int:
  if not 0 <= size < (1 << _IOC_SIZEBITS): raise ValueError(f"ioctl argument size {size} does not fit {_IOC_SIZEBITS} bits")
  return (dir << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)
def _IOW(type:int, nr:int, struct:type[ctypes.Structure]) -> int: return _IOC(IOC_WRITE, type, nr, ctypes.sizeof(struct))
def _IOWR(type:int, nr:int, struct:type[ctypes.Structure]) -> int: return _IOC(IOC_READ | IOC_WRITE, type, nr, ctypes.sizeof(struct))
def ioc_size(request:int) -> int: return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)
def ioc_dir(request:int) -> int: return (request >> _IOC_DIRSHIFT) & (IOC_READ | IOC_WRITE)

# include/uapi/drm/drm.h
DRM_IOCTL_BASE = ord('d')
DRM_COMMAND_BASE = 0x40  # driver-private ioctls are numbered from here
def DRM_IOW(nr:int, struct:type[ctypes.Structure]) -> int: return _IOW(DRM_IOCTL_BASE, nr, struct)
def DRM_IOWR(nr:int, struct:type[ctypes.Structure]) -> int: return _IOWR(DRM_IOCTL_BASE, nr, struct)

# ---- generic DRM structs (include/uapi/drm/drm.h) ----
class drm_version(ctypes.Structure):
  # 3 ints then size_t/pointer pairs: natural alignment inserts 4 pad bytes after the ints on 64-bit (64 B total).
  _fields_ = [("version_major", ctypes.c_int), ("version_minor", ctypes.c_int), ("version_patchlevel", ctypes.c_int),
              ("name_len", ctypes.c_size_t), ("name", ctypes.c_void_p),
              ("date_len", ctypes.c_size_t), ("date", ctypes.c_void_p),
              ("desc_len", ctypes.c_size_t), ("desc", ctypes.c_void_p)]

class drm_gem_close(ctypes.Structure):
  _fields_ = [("handle", ctypes.c_uint32), ("pad", ctypes.c_uint32)]

# ---- rocket structs (include/uapi/drm/rocket_accel.h, rocket_hw.md §1.3) ----
class drm_rocket_create_bo(ctypes.Structure):
  _fields_ = [("size", ctypes.c_uint32),         # in: bytes (shmem rounds up to a page)
              ("handle", ctypes.c_uint32),       # out: GEM handle
              ("dma_address", ctypes.c_uint64),  # out: IOVA in this fd's NPU address space
              ("offset", ctypes.c_uint64)]       # out: fake offset for mmap() on the same fd

class drm_rocket_task(ctypes.Structure):
  _fields_ = [("regcmd", ctypes.c_uint32),        # IOVA of the first 64-bit regcmd entry
              ("regcmd_count", ctypes.c_uint32)]  # entries, tail included; > 0

class drm_rocket_job(ctypes.Structure):
  _fields_ = [("tasks", ctypes.c_uint64),           # user pointer to drm_rocket_task[task_count]
              ("in_bo_handles", ctypes.c_uint64),   # user pointer to u32[in_bo_handle_count]
              ("out_bo_handles", ctypes.c_uint64),  # user pointer to u32[out_bo_handle_count]
              ("task_count", ctypes.c_uint32), ("task_struct_size", ctypes.c_uint32),
              ("in_bo_handle_count", ctypes.c_uint32), ("out_bo_handle_count", ctypes.c_uint32)]

class drm_rocket_submit(ctypes.Structure):
  _fields_ = [("jobs", ctypes.c_uint64),  # user pointer to drm_rocket_job[job_count]
              ("job_count", ctypes.c_uint32), ("job_struct_size", ctypes.c_uint32),
              ("reserved", ctypes.c_uint64)]

class drm_rocket_prep_bo(ctypes.Structure):
  _fields_ = [("handle", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
              ("timeout_ns", ctypes.c_int64)]  # ABSOLUTE CLOCK_MONOTONIC deadline (drm_timeout_abs_to_jiffies)

class drm_rocket_fini_bo(ctypes.Structure):
  _fields_ = [("handle", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]

# ---- request numbers ----
DRM_IOCTL_VERSION = DRM_IOWR(0x00, drm_version)
DRM_IOCTL_GEM_CLOSE = DRM_IOW(0x09, drm_gem_close)
DRM_ROCKET_CREATE_BO, DRM_ROCKET_SUBMIT, DRM_ROCKET_PREP_BO, DRM_ROCKET_FINI_BO = 0x00, 0x01, 0x02, 0x03
DRM_IOCTL_ROCKET_CREATE_BO = DRM_IOWR(DRM_COMMAND_BASE + DRM_ROCKET_CREATE_BO, drm_rocket_create_bo)
DRM_IOCTL_ROCKET_SUBMIT = DRM_IOW(DRM_COMMAND_BASE + DRM_ROCKET_SUBMIT, drm_rocket_submit)
DRM_IOCTL_ROCKET_PREP_BO = DRM_IOW(DRM_COMMAND_BASE + DRM_ROCKET_PREP_BO, drm_rocket_prep_bo)
DRM_IOCTL_ROCKET_FINI_BO = DRM_IOW(DRM_COMMAND_BASE + DRM_ROCKET_FINI_BO, drm_rocket_fini_bo)

IOCTL_NAMES: dict[int, str] = {
  DRM_IOCTL_VERSION: "DRM_IOCTL_VERSION", DRM_IOCTL_GEM_CLOSE: "DRM_IOCTL_GEM_CLOSE",
  DRM_IOCTL_ROCKET_CREATE_BO: "DRM_IOCTL_ROCKET_CREATE_BO", DRM_IOCTL_ROCKET_SUBMIT: "DRM_IOCTL_ROCKET_SUBMIT",
  DRM_IOCTL_ROCKET_PREP_BO: "DRM_IOCTL_ROCKET_PREP_BO", DRM_IOCTL_ROCKET_FINI_BO: "DRM_IOCTL_ROCKET_FINI_BO",
}
IOCTL_STRUCTS: dict[int, type[ctypes.Structure]] = {
  DRM_IOCTL_VERSION: drm_version, DRM_IOCTL_GEM_CLOSE: drm_gem_close,
  DRM_IOCTL_ROCKET_CREATE_BO: drm_rocket_create_bo, DRM_IOCTL_ROCKET_SUBMIT: drm_rocket_submit,
  DRM_IOCTL_ROCKET_PREP_BO: drm_rocket_prep_bo, DRM_IOCTL_ROCKET_FINI_BO: drm_rocket_fini_bo,
}
def ioctl_name(request:int) -> str: return IOCTL_NAMES.get(request, f"ioctl {request:#010x}")

# Value limits of the UAPI fields.
U32_MAX = 0xFFFF_FFFF
INT64_MAX = (1 << 63) - 1  # PREP_BO "wait forever", as Mesa passes it
