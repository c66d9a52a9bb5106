"""int8 x int8 -> int32 matmul register streams, rebuilt from the published third-party programming.

  * build_matmul_int8(variant="gn")   gregordinary/rocket-userspace src/npu_regcmd.c gen_matmul_int8 (mainline rocket,
                                      HW bit-exact): gen_matmul_fp16's task with the int8 deltas its header lists --
                                      CNA/CORE/DPU in/proc precision int8, 1-byte elements, DATA_ENTRIES ceil(K/64),
                                      CORE QD_EN 0, DPU OUT int32, SIZE_E 7 and SURFACE_ADD x8, and one feature CBUF bank
                                      of slack (data_bank = fd_banks + 1, "resonance fix") -- 126 entries, op-enable 0x1D.
  * build_matmul_int8(variant="mtx")  mtx512/rk3588-npu src/npu_matmul.c gen_matmul_int8 as written for the vendor driver
                                      (108 entries, no DPU_RDMA writes, op-enable 0x0D, QD_EN 1, exact-fit data banks).

Layouts (rocket_fp16_ew_ppu.md §1.2/§1.3, mtx512 feature_data/weight_int8): A[M,K] is the cube W=1, H=M, C=K with C2=16
int8; B[N,K] is N kernels of 1x1xK in [N/32][K/32][32][32]; C[M,N] comes back as the int32 cube [N/4][M][4].
Alignment (§1.6): M % 4 (at least 4 rows), K % 32, N % 32 (int8 N = 16 gives garbage); the host zero-pads.

Built from fp16_streams' emitter (the same register sequence both generators share) with the int8 values above: no
code or value comes from tinygrad_rocket's own encoder. Sources read: gregordinary/rocket-userspace @HEAD
(src/npu_regcmd.c gen_matmul_int8, src/rocket_matmul.c rocket_matmul_plan_int8), mtx512/rk3588-npu
src/npu_matmul.c @2e630eb.
"""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np

from . import fp16_streams as f16
from .stream import Buffer, Reg, Stream, align, ceil_div

GN_INT8_SOURCE = "gregordinary/rocket-userspace src/npu_regcmd.c gen_matmul_int8 (gen_matmul_fp16 + int8 deltas)"
MTX_INT8_SOURCE = "mtx512/rk3588-npu src/npu_matmul.c gen_matmul_int8 (vendor rknpu driver)"
INT8_NG, INT8_KG = f16.WEIGHT_GROUPS["int8"]     # 32 kernels x 32 channels per weight tile
INT8_N_ALIGN = 32                                # §1.6 [HW]
INT32_SIZE_E, INT32_SURF_MULT = 7, 8             # gen_matmul_int8: "size_e=7 / surf_add*8 is HW-correct and bit-exact"
GN_INT8_FD_SLACK_BANKS = 1                       # gen_matmul_int8 "RESONANCE FIX": data_bank = fd_banks + 1

@dataclass(frozen=True, eq=False)
class Int8MatmulProblem:
  a: np.ndarray                 # (M, K) int8
  b: np.ndarray                 # (N, K) int8: N kernels of 1x1xK

  def __post_init__(self):
    object.__setattr__(self, "a", np.ascontiguousarray(self.a, dtype=np.int8))
    object.__setattr__(self, "b", np.ascontiguousarray(self.b, dtype=np.int8))
    assert self.a.ndim == 2 and self.b.ndim == 2 and self.a.shape[1] == self.b.shape[1]
  M = property(lambda s: s.a.shape[0]); K = property(lambda s: s.a.shape[1]); N = property(lambda s: s.b.shape[0])
  Mp = property(lambda s: max(align(s.M, 4), 4)); Kp = property(lambda s: align(s.K, 32)); Np = property(lambda s: align(s.N, INT8_N_ALIGN))

def _desc(p:Int8MatmulProblem, variant:str) -> f16.Desc:
  m, k, n = p.Mp, p.Kp, p.Np
  fd_bytes = m * k                         # W=1, H=M, C=K, 1 byte per element
  fd_banks = ceil_div(fd_bytes, f16.CBUF_BANK_SIZE)
  data_bank = fd_banks + (GN_INT8_FD_SLACK_BANKS if variant == "gn" else 0)
  if data_bank > f16.CBUF_BANKS - 1: raise ValueError(f"feature needs {data_bank} CBUF banks > 11 (generator returns -1)")
  if k > f16.CBUF_BANK_SIZE: raise ValueError("one kernel exceeds a CBUF bank (generator returns -2)")
  d = f16.Desc(conv_mode=0, in_precision=f16.PRECISION["int8"], proc_precision=f16.PRECISION["int8"], feature_grains=m + 1,
               conv_x_stride=1, conv_y_stride=1, atrous_x=0, atrous_y=0, datain_width=1, datain_height=m, datain_channel=k,
               dataout_width=1, dataout_height=m, weight_width=1, weight_height=1, weight_kernels=n, weight_bytes_per_kernel=k,
               weight_bytes=k * n, weight_bank=f16.CBUF_BANKS - data_bank, data_bank=data_bank, data_entries=ceil_div(k, 64),
               pad_left=0, pad_top=0, line_stride=4, surf_stride=max(m - 4, 0), dw_en=0, out_precision=f16.PRECISION["int32"],
               fp32tofp16=0, size_e=INT32_SIZE_E, od_bypass=1, bs_ow_op=0, surf_add=m * INT32_SURF_MULT, dst_surf_stride=m)
  d.weight_kernels_out = n
  return d

def _with_qd_en(regs:list[Reg], qd_en:int, src:str) -> list[Reg]:
  """The shared emitter writes CORE_MISC_CFG with QD_EN 1 (the fp16 generators' value); set the generator's own."""
  out = []
  for r in regs:
    if r.name == "CORE_MISC_CFG":
      r = Reg(r.target, r.offset, (r.value & ~1) | qd_en, r.name, f"{src}; PROC int8 | QD_EN {qd_en}")
    out.append(r)
  return out

def decode_matmul_int8(p:Int8MatmulProblem, buf:bytes) -> np.ndarray:
  """int32 cube W=1, H=Mp, C=Np ([Np/4][Mp][4]) -> (M, N) int32."""
  out = f16.unpack_feature(np.frombuffer(buf, dtype="<i4"), p.Np, p.Mp, 1, "int32")[:, :, 0]   # (Np, Mp)
  return out[:p.N, :p.M].T.copy()

def build_matmul_int8(p:Int8MatmulProblem, variant:str="gn") -> Stream:
  assert variant in ("gn", "mtx")
  d = _desc(p, variant)
  if variant == "gn": regs = _with_qd_en(f16.gn_task_entries(d, GN_INT8_SOURCE), 0, GN_INT8_SOURCE)
  else: regs = _with_qd_en(f16.mtx_task_entries(d, MTX_INT8_SOURCE), 1, MTX_INT8_SOURCE)
  a = f16.pack_feature(p.a.T[:, :, None], "int8", channels=p.Kp, height=p.Mp)
  w = f16.pack_weights_grouped(p.b[:, :, None, None], INT8_NG, INT8_KG, p.Np, p.Kp)
  out_bytes = p.Np * p.Mp * 4
  bufs = {"input": Buffer("input", a.size, a.astype(np.int8).tobytes(), alloc_size=a.size + f16.GN_BO_SLACK),
          "weights": Buffer("weights", w.size, w.astype(np.int8).tobytes(), alloc_size=w.size + f16.GN_BO_SLACK),
          "output": Buffer("output", out_bytes, None, alloc_size=out_bytes + f16.GN_BO_SLACK),
          "regcmd": Buffer("regcmd", Stream.regcmd_size_for([len(regs)]))}
  return Stream(name=f"{variant}_matmul_int8_{p.M}x{p.K}x{p.N}", source=GN_INT8_SOURCE if variant == "gn" else MTX_INT8_SOURCE,
                buffers=bufs, task_regs=[regs], in_slots=("input", "weights", "regcmd"), out_slots=("output",),
                output_slot="output", decode=lambda b, p=p: decode_matmul_int8(p, b), meta=dict(problem=p, desc=d, variant=variant))

# ----------------------------------------------------------------------------------------------------------
# int8 conv2d -> int32: gregordinary's gen_conv2d_fill (fp16_streams._conv_desc) with gen_matmul_int8's int8 deltas
# ----------------------------------------------------------------------------------------------------------
# [inf] GN validated the int32 writer on the int8 conv datapath ("size_e=7 / surf*8 is the int8-CONV DATAPATH quirk,
# HW-proven for int32-out") through its matmul-as-1x1-conv; a KxK window changes only the CNA geometry, which the fp16
# conv program already exercises bit-exactly. This stream is that combination, to check the emulator executes it.

@dataclass(frozen=True, eq=False)
class Int8ConvProblem:
  input: np.ndarray                   # (IC, IH, IW) int8
  weights: np.ndarray                 # (OC, IC, KH, KW) int8
  stride: tuple[int, int] = (1, 1)
  pad: tuple[int, int] = (0, 0)       # (top, left), symmetric
  dilation: tuple[int, int] = (1, 1)

  def __post_init__(self):
    object.__setattr__(self, "input", np.ascontiguousarray(self.input, dtype=np.int8))
    object.__setattr__(self, "weights", np.ascontiguousarray(self.weights, dtype=np.int8))
    assert self.weights.ndim == 4 and self.weights.shape[1] == self.IC and self.OH > 0 and self.OW > 0
  IC = property(lambda s: s.input.shape[0]); IH = property(lambda s: s.input.shape[1]); IW = property(lambda s: s.input.shape[2])
  OC = property(lambda s: s.weights.shape[0]); KH = property(lambda s: s.weights.shape[2]); KW = property(lambda s: s.weights.shape[3])
  OH = property(lambda s: f16.conv_out_dim(s.IH, s.KH, s.stride[0], s.pad[0], s.dilation[0]))
  OW = property(lambda s: f16.conv_out_dim(s.IW, s.KW, s.stride[1], s.pad[1], s.dilation[1]))
  ICp = property(lambda s: align(s.IC, INT8_KG)); OCp = property(lambda s: align(s.OC, INT8_N_ALIGN))
  IHj = property(lambda s: max(s.IH, f16.CONV_MIN_DATAIN_H))

  def reference(self) -> np.ndarray:
    """(OC, OH, OW) int64: the exact zero-padded cross-correlation."""
    (pt, pl), (sy, sx), (dy, dx) = self.pad, self.stride, self.dilation
    x = np.zeros((self.IC, self.IH + 2 * pt + self.KH * dy, self.IW + 2 * pl + self.KW * dx), np.int64)
    x[:, pt:pt + self.IH, pl:pl + self.IW] = self.input
    out = np.zeros((self.OC, self.OH, self.OW), np.int64)
    w = self.weights.astype(np.int64)
    for i in range(self.KH):
      for j in range(self.KW):
        win = x[:, i * dy:i * dy + (self.OH - 1) * sy + 1:sy, j * dx:j * dx + (self.OW - 1) * sx + 1:sx]
        out += np.einsum("oc,chw->ohw", w[:, :, i, j], win)
    return out

def build_conv2d_int8(p:Int8ConvProblem) -> Stream:
  IC, IH, IW, OC = p.ICp, p.IHj, p.IW, p.OCp
  fd_banks = ceil_div(IW * IH * IC, f16.CBUF_BANK_SIZE)
  data_bank = fd_banks + GN_INT8_FD_SLACK_BANKS
  bpk = p.KW * p.KH * IC
  if data_bank > f16.CBUF_BANKS - 1 or bpk > f16.CBUF_BANK_SIZE: raise ValueError("does not fit one task")
  (sy, sx), (dy, dx) = p.stride, p.dilation
  d = f16.Desc(conv_mode=0, in_precision=f16.PRECISION["int8"], proc_precision=f16.PRECISION["int8"], feature_grains=IH + 1,
               conv_x_stride=sx, conv_y_stride=sy, atrous_x=dx - 1, atrous_y=dy - 1, datain_width=IW, datain_height=IH,
               datain_channel=IC, dataout_width=p.OW, dataout_height=p.OH, weight_width=p.KW, weight_height=p.KH,
               weight_kernels=OC, weight_bytes_per_kernel=bpk, weight_bytes=bpk * OC, weight_bank=f16.CBUF_BANKS - data_bank,
               data_bank=data_bank, data_entries=ceil_div(IW * IC, 64), pad_left=p.pad[1], pad_top=p.pad[0],
               line_stride=IW * 4, surf_stride=max(IW * (IH - 4), 0), dw_en=0, out_precision=f16.PRECISION["int32"], fp32tofp16=0,
               size_e=INT32_SIZE_E, od_bypass=1, bs_ow_op=0, surf_add=p.OH * p.OW * INT32_SURF_MULT, dst_surf_stride=p.OH * p.OW)
  d.weight_kernels_out = OC
  regs = _with_qd_en(f16.gn_task_entries(d, GN_INT8_SOURCE), 0, GN_INT8_SOURCE)   # PAD_CON1 0: int8 zero padding
  x = f16.pack_feature(p.input, "int8", channels=IC, height=IH)
  w = f16.pack_weights_grouped(p.weights, INT8_NG, INT8_KG, OC, IC)
  out_bytes = OC * p.OH * p.OW * 4
  bufs = {"input": Buffer("input", x.size, x.astype(np.int8).tobytes(), alloc_size=x.size + f16.GN_BO_SLACK),
          "weights": Buffer("weights", w.size, w.astype(np.int8).tobytes(), alloc_size=w.size + f16.GN_BO_SLACK),
          "output": Buffer("output", out_bytes, None, alloc_size=out_bytes + f16.GN_BO_SLACK),
          "regcmd": Buffer("regcmd", Stream.regcmd_size_for([len(regs)]))}
  decode = lambda b, p=p: f16.unpack_feature(np.frombuffer(b, dtype="<i4"), p.OCp, p.OH, p.OW, "int32")[:p.OC].copy()
  return Stream(name=f"gn_conv2d_int8_{p.IC}x{p.IH}x{p.IW}_k{p.KH}x{p.KW}_s{sy}{sx}_p{p.pad[0]}{p.pad[1]}_d{dy}{dx}_oc{p.OC}",
                source=GN_INT8_SOURCE + " + gen_conv2d_fill geometry", buffers=bufs, task_regs=[regs],
                in_slots=("input", "weights", "regcmd"), out_slots=("output",), output_slot="output", decode=decode,
                meta=dict(problem=p, desc=d))
