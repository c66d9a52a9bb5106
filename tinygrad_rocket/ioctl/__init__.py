"""ioctl layer: rocket UAPI structs, fcntl ioctl + mmap, device discovery, errors (DESIGN.md layer 5)."""
from tinygrad_rocket.ioctl.errors import RocketIoctlError, RocketDeviceError, JobValidationError, JobFailedError
from tinygrad_rocket.ioctl.devfile import DeviceFile
from tinygrad_rocket.ioctl.driver import RocketDriver, BufferObject, Job, drm_driver_name
from tinygrad_rocket.ioctl.discovery import find_rocket_node, open_device

__all__ = ["RocketIoctlError", "RocketDeviceError", "JobValidationError", "JobFailedError", "DeviceFile",
           "RocketDriver", "BufferObject", "Job", "drm_driver_name", "find_rocket_node", "open_device"]
