"""The ioctl layer: UAPI layouts and request numbers, errors, DeviceFile, discovery, RocketDriver over the emulator."""
from __future__ import annotations
import ctypes, errno, os, struct, threading, time
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad_rocket.ioctl import (uapi, RocketDriver, Job, DeviceFile, RocketIoctlError, RocketDeviceError, JobValidationError,
                                   JobFailedError, find_rocket_node, open_device)
from tinygrad_rocket.emu import EmuFile, Npu
from tinygrad_rocket.regs.entry import pack_entry, op_enable_entry, MARKER_ENTRY, TARGET_CNA

def layout(s:type[ctypes.Structure]) -> list[tuple[str, int, int]]:
  return [(name, getattr(s, name).offset, getattr(s, name).size) for name, *_ in s._fields_]

# ---------------------------------------------------------------- UAPI
@pytest.mark.parametrize("struct_t, size, fields", [
  (uapi.drm_rocket_create_bo, 24, [("size", 0, 4), ("handle", 4, 4), ("dma_address", 8, 8), ("offset", 16, 8)]),
  (uapi.drm_rocket_task, 8, [("regcmd", 0, 4), ("regcmd_count", 4, 4)]),
  (uapi.drm_rocket_job, 40, [("tasks", 0, 8), ("in_bo_handles", 8, 8), ("out_bo_handles", 16, 8), ("task_count", 24, 4),
                             ("task_struct_size", 28, 4), ("in_bo_handle_count", 32, 4), ("out_bo_handle_count", 36, 4)]),
  (uapi.drm_rocket_submit, 24, [("jobs", 0, 8), ("job_count", 8, 4), ("job_struct_size", 12, 4), ("reserved", 16, 8)]),
  (uapi.drm_rocket_prep_bo, 16, [("handle", 0, 4), ("reserved", 4, 4), ("timeout_ns", 8, 8)]),
  (uapi.drm_rocket_fini_bo, 8, [("handle", 0, 4), ("reserved", 4, 4)]),
  (uapi.drm_gem_close, 8, [("handle", 0, 4), ("pad", 4, 4)]),
  (uapi.drm_version, 64, [("version_major", 0, 4), ("version_minor", 4, 4), ("version_patchlevel", 8, 4), ("name_len", 16, 8),
                          ("name", 24, 8), ("date_len", 32, 8), ("date", 40, 8), ("desc_len", 48, 8), ("desc", 56, 8)]),
])
def test_struct_layouts(struct_t, size, fields):
  if struct_t is uapi.drm_version and ctypes.sizeof(ctypes.c_void_p) != 8: pytest.skip("drm_version layout is for 64-bit")
  assert ctypes.sizeof(struct_t) == size and layout(struct_t) == fields

def test_struct_bytes_match_the_reference_formats():
  # rocket_hw.md §1.3 gives each struct as a Python struct format
  for s, fmt, vals in ((uapi.drm_rocket_create_bo, "<IIQQ", (1, 2, 3, 4)), (uapi.drm_rocket_prep_bo, "<IIq", (1, 0, -5)),
                       (uapi.drm_rocket_job, "<QQQIIII", (1, 2, 3, 4, 5, 6, 7)), (uapi.drm_rocket_submit, "<QIIQ", (1, 2, 3, 4))):
    assert bytes(s(*vals)) == struct.pack(fmt, *vals)

def test_request_numbers():
  assert uapi.DRM_IOCTL_ROCKET_CREATE_BO == 0xC0186440
  assert uapi.DRM_IOCTL_ROCKET_SUBMIT == 0x40186441
  assert uapi.DRM_IOCTL_ROCKET_PREP_BO == 0x40106442
  assert uapi.DRM_IOCTL_ROCKET_FINI_BO == 0x40086443
  assert uapi.DRM_IOCTL_GEM_CLOSE == 0x40086409
  assert uapi.DRM_IOCTL_VERSION == 0xC0406400
  assert uapi._IOC(uapi.IOC_READ | uapi.IOC_WRITE, ord("d"), 0x40, 24) == 0xC0186440
  assert uapi.ioc_size(uapi.DRM_IOCTL_ROCKET_SUBMIT) == 24
  assert uapi.IOCTL_NAMES[0x40186441] == "DRM_IOCTL_ROCKET_SUBMIT" and len(uapi.IOCTL_NAMES) == 6
  assert uapi.ioctl_name(0x1234) == "ioctl 0x00001234"
  with pytest.raises(ValueError): uapi._IOC(1, 1, 1, 1 << 14)

# ---------------------------------------------------------------- errors
def test_error_messages():
  e = RocketIoctlError("DRM_IOCTL_ROCKET_SUBMIT", errno.EINVAL)
  assert isinstance(e, OSError) and e.errno == errno.EINVAL and e.ioctl_name == "DRM_IOCTL_ROCKET_SUBMIT"
  assert str(e) == "DRM_IOCTL_ROCKET_SUBMIT failed: EINVAL (Invalid argument)"
  f = JobFailedError(3, "hang: x")
  assert isinstance(f, RuntimeError) and f.reason == "hang: x" and "hang: x" in str(f)
  assert issubclass(JobValidationError, ValueError)

# ---------------------------------------------------------------- DeviceFile and discovery
def test_devicefile_on_dev_null_is_enotty_naming_the_ioctl():
  f = DeviceFile("/dev/null")
  with pytest.raises(RocketIoctlError) as e: f.ioctl(uapi.DRM_IOCTL_VERSION, uapi.drm_version())
  assert e.value.errno == errno.ENOTTY and "DRM_IOCTL_VERSION failed: ENOTTY" in str(e.value)
  with pytest.raises(RocketIoctlError) as e: RocketDriver(f).driver_name()
  assert e.value.ioctl_name == "DRM_IOCTL_VERSION"
  f.close(); f.close()
  with pytest.raises(ValueError): f.ioctl(uapi.DRM_IOCTL_VERSION, uapi.drm_version())

def test_devicefile_mmap_is_shared_and_writable(tmp_path):
  p = tmp_path / "blob"
  p.write_bytes(bytes(8192))
  f = DeviceFile(str(p))
  m = f.mmap(4096, 4096)
  m[:3] = b"abc"; m.flush(); m.close(); f.close()
  assert p.read_bytes()[4096:4099] == b"abc"

@pytest.fixture
def clean_env(monkeypatch):
  monkeypatch.delenv("ROCKET_EMULATE", raising=False)
  monkeypatch.delenv("ROCKET_DEVICE", raising=False)
  return monkeypatch

def test_open_device_emulate(clean_env):
  clean_env.setenv("ROCKET_EMULATE", "1")
  clean_env.setenv("ROCKET_DEVICE", "/nonexistent/accel9")  # forcing the emulator wins over a named device
  f, why = open_device()
  assert isinstance(f, EmuFile) and why == "ROCKET_EMULATE=1"
  assert RocketDriver(f).driver_name() == "rocket"
  f.close()

def test_open_device_named_device_never_falls_back(clean_env, tmp_path):
  clean_env.setenv("ROCKET_DEVICE", str(tmp_path / "accel7"))
  with pytest.raises(RocketDeviceError, match="accel7: cannot open: ENOENT"): open_device()
  clean_env.setenv("ROCKET_DEVICE", "/dev/null")
  with pytest.raises(RocketDeviceError, match="/dev/null: not a DRM device.*ENOTTY"): open_device()

def test_open_device_falls_back_with_a_reason(clean_env):
  if os.path.isdir("/dev/accel"): pytest.skip("this machine has /dev/accel")
  f, why = open_device()
  assert isinstance(f, EmuFile) and why == "no /dev/accel directory (no DRM accel driver is loaded)"
  f.close()

def test_find_rocket_node_reasons(tmp_path):
  assert find_rocket_node(str(tmp_path / "nope")) == (None, f"no {tmp_path / 'nope'} directory (no DRM accel driver is loaded)")
  assert find_rocket_node(str(tmp_path)) == (None, f"{tmp_path} has no accel* nodes")
  (tmp_path / "accel0").write_bytes(b"")   # a node that is no DRM device: its VERSION ioctl fails
  path, why = find_rocket_node(str(tmp_path))
  assert path is None and why.startswith("no rocket node: ") and "accel0: ENOTTY" in why
  if os.geteuid() != 0:
    (tmp_path / "accel1").write_bytes(b""); (tmp_path / "accel1").chmod(0)
    assert f"permission denied on {tmp_path / 'accel1'}" in find_rocket_node(str(tmp_path))[1]

def test_find_rocket_node_names_foreign_drivers(tmp_path, monkeypatch):
  from tinygrad_rocket.ioctl import discovery
  for n in (2, 10, 1): (tmp_path / f"accel{n}").write_bytes(b"")
  drivers = {"accel1": "ivpu", "accel2": "rocket", "accel10": "rocket"}
  monkeypatch.setattr(discovery, "_driver_of", lambda p: drivers[os.path.basename(p)])
  assert find_rocket_node(str(tmp_path))[0] == str(tmp_path / "accel2")   # numeric order: accel1, accel2, accel10
  drivers["accel2"] = drivers["accel10"] = "amdxdna"
  assert find_rocket_node(str(tmp_path)) == (None, f"no rocket node: {tmp_path}/accel1 is driven by 'ivpu'; "
                                                   f"{tmp_path}/accel2 is driven by 'amdxdna'; {tmp_path}/accel10 is driven by 'amdxdna'")

# ---------------------------------------------------------------- RocketDriver over the emulator
@pytest.fixture
def npu() -> Npu: return Npu()

@pytest.fixture
def drv(npu):
  d = RocketDriver(EmuFile(npu=npu))
  yield d
  d.close()

@pytest.fixture
def calls(npu) -> list[int]:
  seen: list[int] = []
  npu.set_executor(lambda core, mask, mem: seen.append(mask))
  return seen

GOOD = [pack_entry(TARGET_CNA, 1, 0x1070), 0, MARKER_ENTRY, op_enable_entry(0x1D)]
def regcmd_bo(drv:RocketDriver, words:list[int]):
  bo = drv.create_bo(4096)
  bo.view[:8 * len(words)] = struct.pack(f"<{len(words)}Q", *words)
  return bo

def test_create_bo_maps_and_addresses(drv):
  a, b = drv.create_bo(100), drv.create_bo(5000)
  assert (a.dma_address, b.dma_address) == (0, 4096) and a.size == 100 and len(a.view) == 100
  a.view[:4] = b"\x01\x02\x03\x04"
  assert ctypes.string_at(a.va_addr, 4) == b"\x01\x02\x03\x04"       # va_addr is the mapping's CPU address
  ctypes.memmove(b.va_addr + 4990, b"tail", 4)
  assert drv.file.mem.read(b.dma_address + 4990, 4) == b"tail"        # ... and the NPU sees the same bytes
  assert b.iova_end == 4096 + 8192 and drv.bos[b.handle] is b

@pytest.mark.parametrize("size", [0, -1, 1 << 32])
def test_create_bo_rejects_sizes_that_do_not_fit_u32(drv, size):
  with pytest.raises(ValueError, match="u32"): drv.create_bo(size)

def test_driver_name_and_fini(drv):
  assert drv.driver_name() == "rocket"
  bo = drv.create_bo(10)
  drv.fini_bo(bo.handle)
  with pytest.raises(RocketIoctlError) as e: drv.fini_bo(999)
  assert e.value.errno == errno.ENOENT and str(e.value).startswith("DRM_IOCTL_ROCKET_FINI_BO failed: ENOENT")

def test_submit_prep_close(drv, calls):
  rc, out = regcmd_bo(drv, GOOD), drv.create_bo(64)
  drv.submit([Job([(rc.dma_address, 4)], [rc.handle], [out.handle]), Job([(rc.dma_address, 4)] * 2, (), [out.handle])])
  drv.prep_bo(out.handle)
  assert calls == [0x1D] * 3 and drv.file.counters.jobs_completed == 2
  drv.submit([])   # nothing to do
  drv.close_bo(out)
  assert out.handle not in drv.bos
  with pytest.raises(RocketIoctlError) as e: drv.prep_bo(out.handle)
  assert e.value.errno == errno.ENOENT and e.value.ioctl_name == "DRM_IOCTL_ROCKET_PREP_BO"
  assert drv.create_bo(64).dma_address == out.dma_address   # IOVA reused

def test_prep_timeouts(drv, calls):
  rc, out = regcmd_bo(drv, GOOD), drv.create_bo(64)
  with drv.file.hold():
    drv.submit([Job([(rc.dma_address, 4)], [rc.handle], [out.handle])])
    with pytest.raises(RocketIoctlError) as e: drv.prep_bo(out.handle, 0)
    assert e.value.errno == errno.EBUSY
    with pytest.raises(RocketIoctlError) as e: drv.prep_bo(out.handle, 0.02)
    assert e.value.errno == errno.ETIMEDOUT
    t = threading.Thread(target=drv.prep_bo, args=(out.handle, None)); t.start()
  t.join(30)
  assert not t.is_alive() and calls == [0x1D]
  drv.prep_bo(out.handle, 0)

def test_prep_reports_failed_jobs_with_the_reason(drv, calls):
  rc, out = regcmd_bo(drv, GOOD[:2]), drv.create_bo(64)   # no marker, no op-enable
  drv.submit([Job([(rc.dma_address, 2)], [rc.handle], [out.handle])])
  with pytest.raises(JobFailedError) as e: drv.prep_bo(out.handle)
  assert e.value.handle == out.handle and e.value.reason.startswith("hang: regcmd list does not end in op-enable")
  assert "hang: regcmd list does not end in op-enable" in str(e.value)

def test_prep_eio_without_fault_reason():
  class Eio:
    def ioctl(self, request, arg): raise OSError(errno.EIO, "Input/output error")
  with pytest.raises(JobFailedError, match="no reason given"): RocketDriver(Eio()).prep_bo(1)

def test_prep_deadline_is_absolute_monotonic():
  seen: list[int] = []
  class Spy:
    def ioctl(self, request, arg):
      if request == uapi.DRM_IOCTL_ROCKET_PREP_BO: seen.append(uapi.drm_rocket_prep_bo.from_buffer_copy(arg).timeout_ns)
      return 0
  d = RocketDriver(Spy())
  t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
  d.prep_bo(1); d.prep_bo(1, 0); d.prep_bo(1, 2.0)
  assert seen[0] == uapi.INT64_MAX and seen[1] == 0 and seen[2] >= t0 + 2_000_000_000

@pytest.mark.parametrize("job, match", [
  (lambda rc, out: Job([], [], [out.handle]), "no tasks"),
  (lambda rc, out: Job([(rc.dma_address, 0)], [], [out.handle]), "regcmd_count 0"),
  (lambda rc, out: Job([(1 << 32, 4)], [], [out.handle]), "not a u32"),
  (lambda rc, out: Job([(rc.dma_address + 8, 4)], [], [out.handle]), "16-byte aligned"),
  (lambda rc, out: Job([(rc.dma_address + 4096 - 16, 4)], [], [out.handle]), "not inside one BO"),
  (lambda rc, out: Job([(rc.dma_address, 4)], [555], [out.handle]), "in handle 555 was not created by this driver"),
  (lambda rc, out: Job([(rc.dma_address, 4)], [], [556]), "out handle 556"),
  (lambda rc, out: Job([(rc.dma_address, 4)], [rc.handle], []), "no out handles"),
  (lambda rc, out: Job([(rc.dma_address, 4)], [out.handle], [out.handle]), "both in_handles and out_handles"),
])
def test_local_job_validation(drv, calls, job, match):
  rc, out = regcmd_bo(drv, GOOD), drv.create_bo(64)
  good = Job([(rc.dma_address, 4)], [rc.handle], [out.handle])
  with drv.file.hold():
    with pytest.raises(JobValidationError, match=match): drv.submit([good, job(rc, out)])
    drv.prep_bo(out.handle, 0)   # nothing was submitted: not even the good job is queued
  assert calls == []

def test_close_releases_everything(npu, calls):
  f = EmuFile(npu=npu)
  d = RocketDriver(f)
  bos = [d.create_bo(4096) for _ in range(3)]
  keep = bos[0].view[:4]   # a view someone still holds keeps its memory alive, as an mmap outlives the fd
  d.close()
  assert f.closed and d.bos == {} and f.mem.mappings() == [] and len(keep) == 4

@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 3 * 4096), min_size=1, max_size=12), st.data())
def test_driver_bo_lifecycle(sizes, data):
  d = RocketDriver(EmuFile(npu=Npu()))
  live = {}
  for size in sizes:
    bo = d.create_bo(size)
    assert bo.dma_address % 4096 == 0
    assert all(bo.iova_end <= o.dma_address or o.iova_end <= bo.dma_address for o in live.values())
    bo.view[-1:] = b"\x7f"
    assert d.file.mem.read(bo.dma_address + size - 1, 1) == b"\x7f"
    live[bo.handle] = bo
    if data.draw(st.booleans()):
      victim = live.pop(data.draw(st.sampled_from(sorted(live))))
      d.close_bo(victim)
  assert sorted(m.iova for m in d.file.mem.mappings()) == sorted(bo.dma_address for bo in live.values())
  d.close()
