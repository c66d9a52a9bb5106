"""The NPU's register blocks (per core), their regcmd targets, and the op-enable block mask.

Sources: ../shared/reference/rocket_hw.md §3.1 (targets, op-enable mask), §3.2 (block offsets);
Mesa registers.xml (enum `target`, domain GLOBAL OPERATION_ENABLE @0xF008 = the mask layout).
"""
from __future__ import annotations
import enum
from dataclasses import dataclass
from tinygrad_rocket.regs.entry import (TARGET_PC, TARGET_CNA, TARGET_CORE, TARGET_DPU, TARGET_DPU_RDMA, TARGET_PPU,
                                        TARGET_PPU_RDMA)

BLOCK_WINDOW = 0x1000  # every block owns a 4 KiB window of the core's MMIO space

class OpEnable(enum.IntFlag):
  """Value of the 0x0081 op-enable entry: which blocks start (GLOBAL OPERATION_ENABLE layout; bit 1 reserved).

  Mesa conv: CNA|CORE|DPU|DPU_RDMA = 0x1D; DPU-only element-wise 0x18; PPU pooling 0x60; TRM "all" 0x7F.
  """
  CNA = 1 << 0
  CORE = 1 << 2
  DPU = 1 << 3
  DPU_RDMA = 1 << 4
  PPU = 1 << 5
  PPU_RDMA = 1 << 6

OP_ENABLE_KNOWN = sum(OpEnable)  # 0x7D: bits outside it are reserved
MESA_CONV_ENABLE = OpEnable.CNA | OpEnable.CORE | OpEnable.DPU | OpEnable.DPU_RDMA

@dataclass(frozen=True)
class Block:
  name: str
  base: int                   # offset of the block's window within a core
  target: int                 # regcmd target (bits 63:48) of a register write into this block
  enable: OpEnable|None       # its bit in the op-enable mask (PC has none: the kernel starts it over MMIO)

BLOCKS: tuple[Block, ...] = (
  Block("PC", 0x0000, TARGET_PC, None),
  Block("CNA", 0x1000, TARGET_CNA, OpEnable.CNA),
  Block("CORE", 0x3000, TARGET_CORE, OpEnable.CORE),
  Block("DPU", 0x4000, TARGET_DPU, OpEnable.DPU),
  Block("DPU_RDMA", 0x5000, TARGET_DPU_RDMA, OpEnable.DPU_RDMA),
  Block("PPU", 0x6000, TARGET_PPU, OpEnable.PPU),
  Block("PPU_RDMA", 0x7000, TARGET_PPU_RDMA, OpEnable.PPU_RDMA),
)
# Not modelled: the CMAC unit (0x2000; target 0x0401 seen only in RK3568 vendor captures, rocket_hw.md §3.5),
# DDMA 0x8000 / SDMA 0x9000 / GLOBAL 0xF000 (their registers.xml targets do not fit the 16-bit target field).

def op_enable_mask(*blocks:str) -> int:
  """op_enable_mask("CNA", "CORE", "DPU", "DPU_RDMA") == 0x1D."""
  m = 0
  for b in blocks:
    if b not in OpEnable.__members__: raise ValueError(f"no op-enable bit for block {b!r}; blocks: {', '.join(OpEnable.__members__)}")
    m |= OpEnable[b]
  return m

def enabled_blocks(mask:int) -> tuple[str, ...]:
  """Names of the blocks an op-enable mask starts, in bit order (reserved bits are ignored here)."""
  return tuple(name for name, bit in OpEnable.__members__.items() if mask & bit)
