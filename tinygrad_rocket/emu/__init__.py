"""The emulated rocket kernel driver and RK3588 NPU (DESIGN.md layer 6).

EmuFile() stands in for an open /dev/accel/accelN: same ioctl requests and struct bytes as the real driver.
"""
from tinygrad_rocket.emu.memory import IovaSpace, IommuFault, IovaSpaceExhausted, PAGE_SIZE, IOVA_SPACE_SIZE
from tinygrad_rocket.emu.core import NPU, Npu, Core, Counters, HangError, BlockExecutionNotImplemented, decode_regcmd
from tinygrad_rocket.emu.kernel import EmuFile

__all__ = ["EmuFile", "IovaSpace", "IommuFault", "IovaSpaceExhausted", "PAGE_SIZE", "IOVA_SPACE_SIZE",
           "NPU", "Npu", "Core", "Counters", "HangError", "BlockExecutionNotImplemented", "decode_regcmd"]
