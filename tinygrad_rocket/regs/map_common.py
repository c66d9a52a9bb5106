"""Registers every block except PC has at +0x0/+0x4/+0x8 (registers.xml; rocket_hw.md §3.2)."""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register

def pointer_fields() -> tuple[Field, ...]:
  # Rocket writes 0xE = POINTER_PP_EN|EXECUTER_PP_EN|POINTER_PP_MODE (ping-pong register groups, TRM §36.5.1).
  # The kernel also ORs 0x10000000*core_index into CNA/CORE S_POINTER over MMIO ("from rknpu, reserved in TRM");
  # those bits are not described here.
  return (Field("EXECUTER", 16, doc="read: which register group executes"),
          Field("EXECUTER_PP_CLEAR", 5), Field("POINTER_PP_CLEAR", 4), Field("POINTER_PP_MODE", 3),
          Field("EXECUTER_PP_EN", 2), Field("POINTER_PP_EN", 1), Field("POINTER", 0))

def block_header(block:str, base:int, mesa_prefix:str="") -> tuple[Register, ...]:
  """S_STATUS, S_POINTER, OPERATION_ENABLE of `block` (Mesa prefixes the RDMA blocks' names with RDMA_)."""
  def m(name:str) -> str|None: return mesa_prefix + name if mesa_prefix else None
  return (
    register(block, "S_STATUS", base + 0x0, Field("STATUS_1", 16, 2), Field("STATUS_0", 0, 2),
             doc="read-only status of the two register groups", mesa_name=m("S_STATUS")),
    register(block, "S_POINTER", base + 0x4, *pointer_fields(), mesa_name=m("S_POINTER")),
    register(block, "OPERATION_ENABLE", base + 0x8, Field("OP_EN", 0),
             doc="per-block start; regcmd lists start blocks with the 0x0081 op-enable entry instead",
             mesa_name=m("OPERATION_ENABLE")),
  )
