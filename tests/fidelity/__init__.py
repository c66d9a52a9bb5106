"""Fidelity streams: register streams built exactly the way other, hardware-validated drivers build them.

The emulator (tinygrad_rocket/emu/) must follow the hardware, not our own encoder. So this package
rebuilds, independently of tinygrad_rocket/regs/ (our register database), the register streams of:

  * mesa_int8_conv.py   Mesa Teflon's uint8 CONV_2D / DEPTHWISE_CONV_2D (src/gallium/drivers/rocket/)
  * fp16_streams.py     the fp16 matmul of mtx512/rk3588-npu (as copied by gregordinary/rocket-userspace)
                        and gregordinary's general fp16 conv2d (direct + depthwise)

from the facts (register values, formulas, packing loops, emission order) in
../shared/reference/rocket_hw.md and rocket_fp16_ew_ppu.md and the original sources, using only the raw
entry primitive `tinygrad_rocket.regs.entry.pack_entry`. references.py holds independent numpy
references; test_builders.py checks the builders alone; test_emu_fidelity.py drives the emulator.
"""
