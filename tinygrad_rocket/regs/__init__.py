"""Register layer: the RK3588 NPU register map as data, encoder, decoder, listings, task-list assembly.

    from tinygrad_rocket import regs
    e = regs.write("CNA", "CVT_CON0", DATA_SIGN=1, CVT_TYPE=1, CVT_BYPASS=1)   # 0x0201_0000000B_104C
    regs.decode_entry(e).fields["CVT_TYPE"] == 1
    tl = regs.assemble([regs.Task([e, regs.address("CNA", "FEATURE_DATA_ADDR", slot=0)], regs.MESA_CONV_ENABLE)])
    tl.bind([input_iova], regcmd_iova)

Fields documented [31:4] in registers.xml (addresses, DST_SURF_STRIDE, SURF_ADD, EW_SURF_STRIDE, ...) take the byte
value (a multiple of 16), not the shifted count: value("DPU", "DST_SURF_STRIDE", DST_SURF_STRIDE=w*h*16).
"""
from tinygrad_rocket.regs.entry import (Entry, pack_entry, unpack_entry, op_enable_entry, MARKER_ENTRY,  # noqa: F401
  TARGET_PC, TARGET_CNA, TARGET_CORE, TARGET_DPU, TARGET_DPU_RDMA, TARGET_PPU, TARGET_PPU_RDMA, TARGET_MARKER,
  TARGET_OP_ENABLE, OP_ENABLE_OFFSET)
from tinygrad_rocket.regs.fields import Field, Register, RegError, to_signed  # noqa: F401
from tinygrad_rocket.regs.blocks import (Block, BLOCKS, OpEnable, OP_ENABLE_KNOWN, MESA_CONV_ENABLE,  # noqa: F401
  op_enable_mask, enabled_blocks)
from tinygrad_rocket.regs.database import (REGISTERS, get_block, block_at, find_register, register_at,  # noqa: F401
  block_registers)
from tinygrad_rocket.regs.encode import value, write, write_raw  # noqa: F401
from tinygrad_rocket.regs.decode import (EntryKind, DecodedEntry, decode_entry, decode_value, get_field,  # noqa: F401
  read_field)
from tinygrad_rocket.regs.listing import format_entry, disassemble, split_tasks, TaskSpan  # noqa: F401
from tinygrad_rocket.regs.tasklist import (Task, TaskList, TaskRef, Relocation, AddressWrite, address, assemble,  # noqa: F401
  chain_amount, SELF, SLOT_ALIGN, TAIL_ENTRIES)
