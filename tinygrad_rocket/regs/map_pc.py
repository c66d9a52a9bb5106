"""PC (program controller: fetches regcmd lists) registers, 0x0000-0x003C.

Sources: Mesa registers.xml domain PC; rocket_hw.md §2.3 (kernel MMIO sequence), §2.4 (interrupt bits), §3.3 (tail).
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole

_IRQ_BITS = ("CNA_FEATURE_0", "CNA_FEATURE_1", "CNA_WEIGHT_0", "CNA_WEIGHT_1", "CNA_CSC_0", "CNA_CSC_1", "CORE_0",
             "CORE_1", "DPU_0", "DPU_1", "PPU_0", "PPU_1", "DMA_READ_ERROR", "DMA_WRITE_ERROR")

def _irq(name:str, offset:int, doc:str) -> Register:
  # TRM: 17 events, reset mask 0x1FFFF; registers.xml names only bits 13..0 (bits 16..14 unnamed, uncertain).
  return register("PC", name, offset, *(Field(n, i) for i, n in reversed(list(enumerate(_IRQ_BITS)))), doc=doc)

REGISTERS: tuple[Register, ...] = (
  register("PC", "VERSION", 0x0000, whole("VERSION", hex=True), doc="read-only"),
  register("PC", "VERSION_NUM", 0x0004, whole("VERSION_NUM", hex=True),
           doc="read-only; RK3588 boards report VERSION + (VERSION_NUM & 0xffff) = 0x46495245"),
  register("PC", "OPERATION_ENABLE", 0x0008, Field("OP_EN", 0, doc="1: the PC starts fetching the list at BASE_ADDRESS"),
           doc="kernel MMIO. The 0x0081 op-enable regcmd entry also addresses 0x0008, but its value is the block "
               "mask (blocks.OpEnable, GLOBAL OPERATION_ENABLE layout), not this layout: registers.xml calls bits "
               "31:1 RESERVED_0 and Mesa writes the mask as RESERVED_0(14)|OP_EN(1)"),
  register("PC", "BASE_ADDRESS", 0x0010,
           Field("PC_SOURCE_ADDR", 4, 28, aligned=True, address=True, doc="IOVA of the regcmd list (16-byte aligned)"),
           Field("PC_SEL", 0, doc="1: slave mode, registers written over AHB (kernel writes 0x1 first); 0: fetch over AXI"),
           doc="in a list tail: IOVA of the next task's list (chain), or 0"),
  register("PC", "REGISTER_AMOUNTS", 0x0014,
           Field("PC_DATA_AMOUNT", 0, 16, doc="128-bit beats to fetch minus 1 (kernel: (regcmd_count+1)/2-1)"),
           doc="in a list tail: amount for the next task of the chain, or 0"),
  _irq("INTERRUPT_MASK", 0x0020, "1 = enabled; the kernel enables DPU_0|DPU_1 (0x300)"),
  _irq("INTERRUPT_CLEAR", 0x0024, "write 1 to clear"),
  _irq("INTERRUPT_STATUS", 0x0028, "RAW_STATUS & MASK"),
  _irq("INTERRUPT_RAW_STATUS", 0x002C, "kernel IRQ handler reads this"),
  register("PC", "TASK_CON", 0x0030,
           Field("RESERVED_14", 14, doc="registers.xml RESERVED_0; the kernel writes 1 (0x7001)"),
           Field("TASK_COUNT_CLEAR", 13), Field("TASK_PP_EN", 12),
           Field("TASK_NUMBER", 0, 12, doc="tasks per kick; mainline rocket writes 1, so list chains are not followed")),
  register("PC", "TASK_DMA_BASE_ADDR", 0x0034, Field("DMA_BASE_ADDR", 4, 28, aligned=True, address=True)),
  register("PC", "TASK_STATUS", 0x003C, Field("TASK_STATUS", 0, 28), doc="read-only"),
)
