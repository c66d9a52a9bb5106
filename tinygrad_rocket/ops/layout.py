"""The NPU's data layouts (rocket_fp16_ew_ppu.md §1.2, §1.3), as element-index arithmetic.

Feature cubes are NC1HWC2 with a 16-byte atom: C2 = 16 / element bytes channels of one pixel are contiguous,
  elem(c, h, w) = (c // C2) * H*W*C2 + (h*W + w) * C2 + c % C2          (w: the contiguous axis, DATAIN_WIDTH)
Weights are kernel groups of NG kernels x KG channels (fp16: NG 16, KG 32), per tap:
  elem(oc, ic, kh, kw) = ((((oc//NG)*ceil(IC/KG) + ic//KG)*KH + kh)*KW + kw)*NG*KG + (oc%NG)*KG + ic%KG
Depthwise weights are channel groups of G (fp16 32), per tap:
  elem(c, kh, kw) = ((c//G)*KH + kh)*KW*G + kw*G + c%G
Padding channels and kernels are zero.
"""
from __future__ import annotations
from dataclasses import dataclass

ATOM_BYTES = 16
# Element bytes per precision name (the names of regs.values.PRECISION): rocket_fp16_ew_ppu.md §1.1/§1.2
ELEMENT_BYTES = {"int8": 1, "int16": 2, "fp16": 2, "bf16": 2, "int32": 4, "fp32": 4, "tf32": 4}
# Weight kernel group (NG kernels, KG channels) per CNA precision: rocket_fp16_ew_ppu.md §1.3 table [HW]
WEIGHT_GROUPS = {"int8": (32, 32), "fp16": (16, 32), "bf16": (16, 32), "tf32": (16, 16)}
# Depthwise channel group G per CNA precision: §1.3 (fp16 32 [HW, GN: 64 gives wrong results], int8 64 [Mesa]);
# ⚠ bf16 assumed like fp16 (same element size, not measured)
DW_GROUPS = {"int8": 64, "fp16": 32, "bf16": 32}
# The same kernel groups keyed by numpy dtype name (the contraction rule's operands)
WEIGHT_GROUP = {"float16": WEIGHT_GROUPS["fp16"], "int8": WEIGHT_GROUPS["int8"]}

def ceil_div(a:int, b:int) -> int: return -(-a // b)
def align(a:int, b:int) -> int: return ceil_div(a, b) * b

def c2(elem_bytes:int) -> int: return ATOM_BYTES // elem_bytes

@dataclass(frozen=True)
class Feature:
  """A feature cube C x H x W of `elem_bytes`-byte elements in NC1HWC2."""
  C: int
  H: int
  W: int
  elem_bytes: int

  @property
  def c2(self) -> int: return c2(self.elem_bytes)
  @property
  def c1(self) -> int: return ceil_div(self.C, self.c2)
  @property
  def elems(self) -> int: return self.c1 * self.H * self.W * self.c2
  @property
  def nbytes(self) -> int: return self.elems * self.elem_bytes
  @property
  def surface_elems(self) -> int: return self.H * self.W * self.c2
  def grid(self) -> tuple[int, int, int, int]:
    """(C1, H, W, C2): the cube's coordinates in memory order."""
    return (self.c1, self.H, self.W, self.c2)
  def grid_strides(self) -> tuple[int, int, int, int]:
    """Element strides of the (C1, H, W, C2) grid: the cube is dense in that order."""
    return (self.surface_elems, self.W * self.c2, self.c2, 1)

@dataclass(frozen=True)
class Weights:
  """OC kernels of IC x KH x KW, packed in kernel groups (NG kernels x KG channels per tap)."""
  OC: int
  IC: int
  KH: int
  KW: int
  dtype: str

  @property
  def group(self) -> tuple[int, int]: return WEIGHT_GROUP[self.dtype]
  @property
  def oc_padded(self) -> int: return align(self.OC, self.group[0])
  @property
  def ic_padded(self) -> int: return align(self.IC, self.group[1])
  @property
  def elems(self) -> int: return self.oc_padded * self.ic_padded * self.KH * self.KW
  def grid(self) -> tuple[int, ...]:
    """(OC1, IC1, KH, KW, NG, KG): memory order."""
    ng, kg = self.group
    return (self.oc_padded // ng, self.ic_padded // kg, self.KH, self.KW, ng, kg)
  def grid_strides(self) -> tuple[int, ...]:
    ng, kg = self.group
    g = self.grid()
    return (g[1]*g[2]*g[3]*ng*kg, g[2]*g[3]*ng*kg, g[3]*ng*kg, ng*kg, kg, 1)

@dataclass(frozen=True)
class DepthwiseWeights:
  """One KH x KW kernel per channel of C, packed in channel groups of G (§1.3: [C/G][KH][KW][G])."""
  C: int
  KH: int
  KW: int
  precision: str

  @property
  def group(self) -> int: return DW_GROUPS[self.precision]
  @property
  def c_padded(self) -> int: return align(self.C, self.group)
  @property
  def elems(self) -> int: return self.c_padded * self.KH * self.KW
  def grid(self) -> tuple[int, int, int, int]:
    """(C1, KH, KW, G): memory order."""
    return (self.c_padded // self.group, self.KH, self.KW, self.group)
  def grid_strides(self) -> tuple[int, int, int, int]:
    g = self.group
    return (self.KH * self.KW * g, self.KW * g, g, 1)
