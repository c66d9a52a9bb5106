"""PPU + PPU_RDMA: planar pooling (NVDLA PDP) of an fp16 cube read from memory (rocket_fp16_ew_ppu.md §5, GN's
HW-validated program: max/min bit-exact, average within 0.002).

Model: PPU_RDMA reads an fp16 NC1HWC2 cube (C2 8; rows SRC_LINE_STRIDE bytes apart, surfaces SRC_SURF_STRIDE bytes
apart); every output (c, y, x) reduces the KERNEL_H x KERNEL_W window at (y*STRIDE_H - PAD_TOP, x*STRIDE_W - PAD_LEFT),
taps outside the input reading PADDING_VALUE (fp16 bits: GN's max uses -inf 0xFC00); max / min exactly; average =
(window sum in fp32) * RECIP_W * RECIP_H * 2^-32 with the RECIP registers read as fp16 values (65536/k), each product
rounded to fp32, then to fp16 (internal widths unknown ⚠); the window always counts its padding taps (GN).
The output cube goes to DST_BASE_ADDR (surfaces DST_SURF_STRIDE bytes apart, rows OUT_WIDTH atoms).
"""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np
from tinygrad_rocket.emu import arith, layouts
from tinygrad_rocket.emu.descs import Fields, UnsupportedConfig, _need, _require_zero, PREC_NAME
from tinygrad_rocket.emu.memory import IovaSpace

# Fields a PPU task must leave 0 (block, register, field, why): modes nobody documented or validated.
PPU_MUST_BE_ZERO: tuple[tuple[str, str, str, str], ...] = (
  ("PPU", "OPERATION_MODE_CFG", "INDEX_EN", "PPU index output is not emulated"),
  ("PPU", "OPERATION_MODE_CFG", "NOTCH_ADDR", "PPU notches are not documented"),
  ("PPU", "DATA_FORMAT", "DPU_FLYIN", "the DPU -> PPU on-the-fly path is not emulated"),
  ("PPU", "MISC_CTRL", "MC_SURF_OUT", "PPU MC_SURF_OUT is not documented"),
  ("PPU", "PADDING_VALUE_2_CFG", "PAD_VALUE_1", "pad value bits 34:32 are not documented for fp16"),
)

MAX_KERNEL = 16   # 4-bit value-1 fields

@dataclass(frozen=True)
class PpuDesc:
  in_w: int; in_h: int; channels: int
  out_w: int; out_h: int
  method: int; kw: int; kh: int; sx: int; sy: int
  pad_left: int; pad_top: int; pad_right: int; pad_bottom: int
  pad_bits: int; recip_w: int; recip_h: int
  src: int; line: int; surf: int
  dst: int; dst_surf: int

def decode_ppu(F:Fields) -> PpuDesc:
  P_, R = "PPU", "PPU_RDMA"
  _require_zero(F, PPU_MUST_BE_ZERO)
  _need(F(P_, "OPERATION_MODE_CFG", "FLYING_MODE") == 1, "PPU input other than PPU_RDMA (FLYING_MODE 0) is not emulated")
  prec = PREC_NAME.get(F(P_, "DATA_FORMAT", "PROC_PRECISION"))
  _need(prec == "fp16", f"PPU at {prec}: GN measured garbage at int8; only fp16 is validated")
  _need(F(R, "DATA_FORMAT", "IN_PRECISION") == 2, "PPU_RDMA IN_PRECISION (element size) other than 16-bit with fp16 pooling")
  method = F(P_, "OPERATION_MODE_CFG", "POOLING_METHOD")
  _need(method in (0, 1, 2), f"POOLING_METHOD {method}")
  d = PpuDesc(in_w=F(P_, "DATA_CUBE_IN_WIDTH", "CUBE_IN_WIDTH") + 1, in_h=F(P_, "DATA_CUBE_IN_HEIGHT", "CUBE_IN_HEIGHT") + 1,
              channels=F(P_, "DATA_CUBE_IN_CHANNEL", "CUBE_IN_CHANNEL") + 1,
              out_w=F(P_, "DATA_CUBE_OUT_WIDTH", "CUBE_OUT_WIDTH") + 1, out_h=F(P_, "DATA_CUBE_OUT_HEIGHT", "CUBE_OUT_HEIGHT") + 1,
              method=method, kw=F(P_, "POOLING_KERNEL_CFG", "KERNEL_WIDTH") + 1, kh=F(P_, "POOLING_KERNEL_CFG", "KERNEL_HEIGHT") + 1,
              sx=F(P_, "POOLING_KERNEL_CFG", "KERNEL_STRIDE_WIDTH") + 1, sy=F(P_, "POOLING_KERNEL_CFG", "KERNEL_STRIDE_HEIGHT") + 1,
              pad_left=F(P_, "POOLING_PADDING_CFG", "PAD_LEFT"), pad_top=F(P_, "POOLING_PADDING_CFG", "PAD_TOP"),
              pad_right=F(P_, "POOLING_PADDING_CFG", "PAD_RIGHT"), pad_bottom=F(P_, "POOLING_PADDING_CFG", "PAD_BOTTOM"),
              pad_bits=F(P_, "PADDING_VALUE_1_CFG", "PAD_VALUE_0"),
              recip_w=F(P_, "RECIP_KERNEL_WIDTH", "RECIP_KERNEL_WIDTH"), recip_h=F(P_, "RECIP_KERNEL_HEIGHT", "RECIP_KERNEL_HEIGHT"),
              src=F(R, "SRC_BASE_ADDR", "SRC_BASE_ADDR"), line=F(R, "SRC_LINE_STRIDE", "SRC_LINE_STRIDE"),
              surf=F(R, "SRC_SURF_STRIDE", "SRC_SURF_STRIDE"),
              dst=F(P_, "DST_BASE_ADDR", "DST_BASE_ADDR"), dst_surf=F(P_, "DST_SURF_STRIDE", "DST_SURF_STRIDE"))
  rdma = (F(R, "CUBE_IN_WIDTH", "CUBE_IN_WIDTH") + 1, F(R, "CUBE_IN_HEIGHT", "CUBE_IN_HEIGHT") + 1,
          F(R, "CUBE_IN_CHANNEL", "CUBE_IN_CHANNEL") + 1)
  _need(rdma == (d.in_w, d.in_h, d.channels), f"PPU_RDMA cube {rdma} differs from the PPU input cube {(d.in_w, d.in_h, d.channels)}")
  _need(F(P_, "DATA_CUBE_OUT_CHANNEL", "CUBE_OUT_CHANNEL") + 1 == d.channels, "PPU output channels differ from its input's")
  for name, n in (("width", d.in_w), ("height", d.in_h), ("channels", d.channels)):
    _need(n != 8191, f"a PPU cube {name} of exactly 8191: the hardware corrupts the tail (GN, rocket_fp16_ew_ppu.md §1.6)")
  _need(d.channels % 8 == 0, f"{d.channels} channels: not whole fp16 atoms")
  want_w = (d.in_w + d.pad_left + d.pad_right - d.kw) // d.sx + 1
  want_h = (d.in_h + d.pad_top + d.pad_bottom - d.kh) // d.sy + 1
  _need((d.out_w, d.out_h) == (want_w, want_h), f"PPU output {d.out_w}x{d.out_h} != {want_w}x{want_h} from the input, "
        "kernel, stride and padding")
  _need(d.line >= d.in_w * 16 and (d.channels <= 8 or d.surf >= d.in_h * d.line), "PPU_RDMA strides overlap rows/surfaces")
  _need(d.channels <= 8 or d.dst_surf >= d.out_w * d.out_h * 16, "PPU DST_SURF_STRIDE overlaps its surfaces")
  return d

@dataclass
class PpuResult:
  scatter: layouts.Scatter
  atoms: np.ndarray
  read_bytes: int
  read_range: tuple

def run(d:PpuDesc, mem:IovaSpace, core_state:dict) -> PpuResult:
  S = d.channels // 8
  # GN (rocket_fp16_ew_ppu.md §6.C): a PPU pass reading a sub-4x4 cube the previous PPU pass just wrote gets about half
  # of the channels wrong (cubes written by the CPU are fine): refused.
  last = core_state.get("ppu_last_write")
  if last is not None and (d.in_w < 4 or d.in_h < 4) and last[0] < d.src + (S - 1) * d.surf + d.in_h * d.line and d.src < last[1]:
    raise UnsupportedConfig("PPU reading a sub-4x4 cube the previous PPU pass wrote: the hardware gets about half of the "
                            "channels wrong (GN)")
  row = d.out_w * 16
  sc = layouts.plan_scatter(mem, d.dst, (S, d.out_h), (d.dst_surf, row), row, "PPU WDMA")
  atoms = layouts.gather(mem, d.src, (S, d.in_h), (d.surf, d.line), d.in_w * 16, "PPU_RDMA")
  x = arith.fp16_to_f32(layouts.atoms_to_cube(atoms.reshape(S, d.in_h, d.in_w, 16), np.dtype("<f2"), d.channels))
  pad = arith.fp16_bits_to_f32(d.pad_bits)
  Hp, Wp = (d.out_h - 1) * d.sy + d.kh, (d.out_w - 1) * d.sx + d.kw
  xp = np.full((d.channels, max(Hp, d.pad_top + d.in_h), max(Wp, d.pad_left + d.in_w)), pad, np.float32)
  xp[:, d.pad_top:d.pad_top + d.in_h, d.pad_left:d.pad_left + d.in_w] = x
  win = np.lib.stride_tricks.sliding_window_view(xp[:, :Hp, :Wp], (d.kh, d.kw), axis=(1, 2))[:, ::d.sy, ::d.sx]
  if d.method == 1: y = win.max(axis=(3, 4))
  elif d.method == 2: y = win.min(axis=(3, 4))
  else:
    with np.errstate(all="ignore"):
      s = win.astype(np.float64).sum(axis=(3, 4)).astype(np.float32)
      y = arith.f32(arith.f32(s * arith.fp16_bits_to_f32(d.recip_w)) * arith.fp16_bits_to_f32(d.recip_h))
      y = arith.f32(y * np.float32(2.0 ** -32))
  out = arith.to_fp16(y)
  core_state["ppu_last_write"] = (d.dst, d.dst + (S - 1) * d.dst_surf + d.out_h * row)
  return PpuResult(sc, layouts.cube_to_atoms(out, out.dtype), atoms.nbytes, (d.src, (S, d.in_h), (d.surf, d.line), d.in_w * 16))
