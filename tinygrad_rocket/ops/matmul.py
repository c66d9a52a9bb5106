"""Matmul tasks: C[M,N] = A[M,K] @ B[K,N] as a 1x1 convolution: fp16 operands with fp32 accumulation and output, or
int8 operands with int32 accumulation and output (INT8 below).

Programming: rocket_fp16_ew_ppu.md §2.1 (mtx512 gen_matmul_fp16 as re-validated by gregordinary on mainline rocket,
[HW]). A is a feature cube W=1, H=M, C=K (fp16, C2=8); B is N kernels of 1x1xK (kernel groups 16 x 32); the DPU
writes C as an fp32 cube W=1, H=M, C=N (C2=4). Every block is programmed in full each task: the register file
persists across jobs (§6.D), so nothing may be left to a previous task.
"""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np
from tinygrad_rocket import regs
from tinygrad_rocket.ops.layout import Feature, Weights, ceil_div, align

CBUF_BANKS, CBUF_BANK_BYTES = 12, 32768        # rocket_hw.md §5.6
MIN_ROWS = 4                                   # CNA input height < 4 computes wrong (rocket_fp16_ew_ppu.md §1.6, §6.C)
# rows per task: CNA DATAIN_HEIGHT is 11 bits, but FEATURE_GRAINS = rows + 1 is a 10-bit field (§1.6)
MAX_ROWS = (1 << 10) - 2
MAX_KERNEL_BYTES = CBUF_BANK_BYTES             # weight bytes per kernel <= one bank (§1.6)
K_ALIGN, N_ALIGN = 32, 16                      # fp16 K % 32, N % 16 (§1.6)
PREC_FP16, PREC_FP32 = 2, 5                    # precision codes (§1.1)
DMA_BURST_16 = 15                              # burst length field value for 16 beats (Mesa DMA_CON0 0x000F000F)
SIZE_E_FP32_OUT = 3                            # fp16 -> fp32: 4 atoms per 16-kernel group (§1.4)
ATOMS_FP32_OUT = SIZE_E_FP32_OUT + 1
ATOMS_FP16_OUT = 2                             # fp16 -> fp16: 2 atoms per 16-kernel group, SIZE_E 1 (§1.4, MTX/GN [HW])
OUTPUT_TO_MEMORY = 2                           # DPU FEATURE_MODE_CFG.OUTPUT_MODE bit1: write to memory
BS_BN_BYPASS = dict(BS_BYPASS=1, BS_ALU_BYPASS=1, BS_MUL_BYPASS=1, BS_RELU_BYPASS=1)  # = 0x53, "all bypass" (§2.1)
ONE_SCALE = 1                                  # CVT scales of 1: no conversion
# The EW stage per operation with a per-pixel operand (rocket_fp16_ew_ppu.md §3.2, conv-fed §2.3, GN [HW] bit-exact):
# ALU ops keep the EW input converter on (an identity), MUL bypasses it (a live converter on an fp16 MUL hangs).
EW_OPS: dict[str, dict[str, int]] = {
  "add": dict(EW_ALU_ALGO=2), "sub": dict(EW_ALU_ALGO=4), "max": dict(EW_ALU_ALGO=0), "min": dict(EW_ALU_ALGO=1),
  "mul": dict(EW_OP_TYPE=1, EW_OP_CVT_BYPASS=1)}
EW_SIZE = {2: 2, 4: 3}                         # operand bytes -> EDATA_SIZE / ERDMA_DATA_SIZE code (16 / 32 bit)
EW_COMB_USE = 5                                # MRDMA and ERDMA share the operand (Mesa add_tensor, GN; §2.3)
# EW_SURF_STRIDE / SURF_NOTCH take max(W*H, 12) atoms in Mesa; below 12 the hardware mis-strides (GN "test with M >= 12",
# §2.3, §6.C): an EW task's output plane keeps at least this many atoms.
EW_MIN_PLANE_ATOMS = 12

# ***** the int8 path: int8 x int8 products summed and written as int32 (rocket_fp16_ew_ppu.md §1.7) *****
# Every choice of the int8 programming that the sources do not settle lives in this table, with why it was made. The
# programming is mtx512's int8 matmul (§2.1, last paragraph; run on boards with the vendor driver) as gregordinary
# re-validated the int32 writer on mainline rocket (§1.4 "int8 -> int32 / fp32 cast", §1.7 "raw int32 out with
# OUT_CVT_SCALE=1"). Fields that do not depend on the precision (strides, addresses, DPU_RDMA) stay those of the fp16 task.
INT8 = dict(
  # DPU OUT_PRECISION int32 (code 4, §1.1 [HW] MTX): the accumulator written exactly. int8/int16 outputs requantize
  # (OUT_CVT rounding, saturation: §5.7/§7.2), and int16 output after an int8 conv hangs (§6.B); fp32 output is an exact
  # cast too but rounds sums beyond 2^24. int32 needs no bound beyond the accumulator's (see MAX_ABS_SUM).
  out="int32",
  # ⚠ CORE MISC_CFG.QD_EN 0: gregordinary's gen_matmul_int8 (mainline rocket, bit-exact on a board) lists "qd_en 1->0"
  # among its int8 deltas, and §2.1 gives 0 for mtx512; mtx512's current src/npu_matmul.c writes 1 (vendor driver). GN
  # also says the int8 *requant* writer needs 1. We take the mainline value; the emulator accepts either.
  qd_en=0,
  # Output channels per kernel group 32 (§1.3 int8 NG) x 4 bytes = 8 atoms: BS_OW_CFG.SIZE_E 7, SURFACE_ADD = 8 surfaces
  # (§1.4 [HW] MTX/GN: 3/x4 leaves surfaces unwritten).
  atoms=8,
  # One CBUF bank more than the feature needs: an int8 feature filling its banks exactly computes the last rows wrong
  # (§6.C, GN cbuf-bank-slack [HW], seen at width 1, i.e. this matmul layout).
  data_bank_slack=1,
  # N (kernels per task) a multiple of 32 (§1.6: int8 N = 16 gives garbage [HW]); K a multiple of 32 (§1.6).
  n_align=32, k_align=32,
  # ⚠ ReLU on the int32 datapath: the BS stage's ReLU unit (ALU and MUL bypassed) on the integer accumulator. Inferred from
  # the TRM field names and GN's integer X-stage sweeps (per-channel requant, int8 out); not measured with int32 output.
  # max(acc, 0) is exact in any case, so a board that disagreed would show it in one test.
  relu_in_bs=True,
)
# The int32 accumulator is exact while |sum| < 2^31 (CACC is 34 bits for int8, §1.7/§5.8; the writer is 32 bits). A task
# holds at most one CBUF bank (32 KiB) of one kernel's int8 weights (§1.6), so K <= 32768 per task and
# |sum| <= 32768 * 128 * 128 = 2^29: no int8 task can overflow. K beyond one task is refused, not split: partial sums
# would need an integer EW add, and the EW ALU is float-only (§6.C, GN [HW]).
MAX_ABS_SUM = MAX_KERNEL_BYTES * 128 * 128
assert MAX_ABS_SUM < 2 ** 31
PREC_INT8, PREC_INT32 = 0, 4                   # precision codes (§1.1)

@dataclass(frozen=True)
class EwOperand:
  """A per-pixel operand the DPU's EW stage combines with the task's result: result `op` operand (sub: result minus
  operand). The operand is a cube shaped like the output tile (C=N, H=M, W=1) in NC1HWC2 with `nbytes` per element
  (2: fp16, 4: fp32 partials, §7.3), surfaces back to back at byte `off` of `slot`. `relu`: the EW ReLU after the op;
  `clip` (with relu): its ReLUX also clamps results above `clip`. ⚠ The EW ReLUX (EW_RELUX_EN, compare value an fp32
  bit pattern) is inferred like the BS one (matmul_task), from the TRM field names, not confirmed on hardware."""
  op: str
  slot: int
  off: int
  nbytes: int = 2
  relu: bool = False
  clip: float|None = None

@dataclass(frozen=True)
class XStageOp:
  """What the BS stage does to the accumulator before EW: x*mul + add (fp16 multiplier, fp32 addend; §3.4), then
  ReLU and the ReLUX clamp at `clip`. ⚠ the MUL-then-ALU order is GN's measurement for BN, assumed for BS (§3.4,
  §7.3): a task that uses both sets only one of them unless the values make the order irrelevant (callers fold)."""
  mul: float|None = None
  add: float|None = None
  relu: bool = False
  clip: float|None = None

def fp32_bits(v:float) -> int: return int(np.float32(v).view(np.uint32))
def fp16_bits(v:float) -> int: return int(np.float16(v).view(np.uint16))

def bs_fields(x:XStageOp) -> dict[str, dict[str, int]]:
  """The BS stage's registers for x (all bypassed when x does nothing)."""
  assert x.clip is None or x.relu, "ReLUX clamps after the ReLU"
  if x.mul is None and x.add is None and not x.relu: return dict(BS_CFG=BS_BN_BYPASS, BS_ALU_CFG={}, BS_MUL_CFG={}, BS_RELUX_CMP_VALUE={})
  cfg = dict(BS_MUL_BYPASS=int(x.mul is None), BS_ALU_BYPASS=int(x.add is None), BS_RELU_BYPASS=int(not x.relu),
             BS_RELUX_EN=int(x.clip is not None), BS_ALU_ALGO=2 if x.add is not None else 0)
  return dict(BS_CFG=cfg, BS_ALU_CFG=dict(BS_ALU_OPERAND=fp32_bits(x.add)) if x.add is not None else {},
              BS_MUL_CFG=dict(BS_MUL_OPERAND=fp16_bits(x.mul)) if x.mul is not None else {},
              BS_RELUX_CMP_VALUE=dict(BS_RELUX_CMP_DAT=0 if x.clip is None else fp32_bits(x.clip)))

EW_BYPASS = dict(EW_RELU_BYPASS=1, EW_OP_CVT_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_BYPASS=1, EW_BYPASS=1)  # = 0x383 (§2.1)

def ew_fields(ew:EwOperand|None) -> dict[str, dict[str, int]]:
  """The EW stage's DPU registers for ew (bypassed without an operand)."""
  if ew is None: return dict(EW_CFG=EW_BYPASS, EW_RELUX_CMP_VALUE={})
  assert ew.clip is None or ew.relu, "the EW ReLUX clamps after the EW ReLU"
  return dict(EW_CFG=dict(EW_DATA_MODE=1, EDATA_SIZE=EW_SIZE[ew.nbytes], EW_RELU_BYPASS=int(not ew.relu), EW_LUT_BYPASS=1,
                          EW_OP_SRC=1, EW_RELUX_EN=int(ew.clip is not None), **EW_OPS[ew.op]),
              EW_RELUX_CMP_VALUE={} if ew.clip is None else dict(EW_RELUX_CMP_DAT=fp32_bits(ew.clip)))

def ew_rdma(ew:EwOperand|None, plane:int, conv_mode:int=0) -> dict[str, dict[str, int]|regs.AddressWrite]:
  """DPU_RDMA's registers for ew; `plane`: bytes of one output surface (W*H atoms). Without an operand nothing is fed
  (MRDMA and ERDMA disabled: leaving MRDMA armed hangs, §6.B, the MRDMA trap); with one, MRDMA and ERDMA share it
  (COMB_USE 5): surfaces at the operand base, ERDMA one surface further, both stepping two surfaces (notch = one
  plane), EW_SURF_STRIDE one plane (the emulator's _ew_plan, §2.3). conv_mode: CONV_MODE of the conv feeding the DPU."""
  mode = dict(BURST_LEN=DMA_BURST_16, **({"CONV_MODE": conv_mode} if conv_mode else {}))
  if ew is None:
    return dict(FEATURE_MODE_CFG=dict(mode, MRDMA_DISABLE=1), ERDMA_CFG=dict(ERDMA_DISABLE=1), SRC_BASE_ADDR={}, EW_BASE_ADDR={},
                EW_SURF_STRIDE={}, SURF_NOTCH={}, EW_SURF_NOTCH={})
  return dict(FEATURE_MODE_CFG=dict(mode, COMB_USE=EW_COMB_USE, IN_PRECISION=PREC_FP16, PROC_PRECISION=PREC_FP16),
              ERDMA_CFG=dict(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=EW_SIZE[ew.nbytes]),
              SRC_BASE_ADDR=regs.address("DPU_RDMA", "SRC_BASE_ADDR", ew.slot, ew.off),
              EW_BASE_ADDR=regs.address("DPU_RDMA", "EW_BASE_ADDR", ew.slot, ew.off + plane),
              EW_SURF_STRIDE=dict(EW_SURF_STRIDE=plane), SURF_NOTCH=dict(SURF_NOTCH_ADDR=plane), EW_SURF_NOTCH=dict(EW_SURF_NOTCH=plane))

@dataclass(frozen=True)
class MatmulTile:
  """One task: rows [m0, m0+M) of A times kernels [n0, n0+N) of B, all of K."""
  M: int       # rows given to the hardware (>= 4; rows past the real ones are zero and discarded)
  K: int       # padded to K_ALIGN
  N: int       # padded to N_ALIGN (int8: INT8["n_align"])
  precision: str = "fp16"   # "fp16" (fp32 out) or "int8" (int32 out)

  @property
  def ebytes(self) -> int: return 1 if self.precision == "int8" else 2
  @property
  def a(self) -> Feature: return Feature(self.K, self.M, 1, self.ebytes)
  @property
  def b(self) -> Weights: return Weights(self.N, self.K, 1, 1, "int8" if self.precision == "int8" else "float16")
  @property
  def c(self) -> Feature: return Feature(self.N, self.M, 1, 4)
  @property
  def data_banks(self) -> int:
    return ceil_div(self.a.nbytes, CBUF_BANK_BYTES) + (INT8["data_bank_slack"] if self.precision == "int8" else 0)
  @property
  def weight_banks(self) -> int: return ceil_div(self.b.elems * self.ebytes, CBUF_BANK_BYTES)

def plan_tiles(M:int, K:int, N:int, residual:bool=False, precision:str="fp16") -> tuple[int, int]|str:
  """Rows per task and kernels per task so that one task's feature and weights fit the CBUF together, or why not.
  `residual`: every task carries n_t more K columns (the residual block), so K grows with the kernels per task.
  ⚠ Whether weights larger than the weight banks stream through them is disputed (§1.6: MTX yes, GN budgets
  feature + weight banks <= 12); we take GN's conservative budget."""
  eb, n_align, slack = (1, INT8["n_align"], INT8["data_bank_slack"]) if precision == "int8" else (2, N_ALIGN, 0)
  if eb * align(K, K_ALIGN) > MAX_KERNEL_BYTES:
    return f"K={K} needs {eb*align(K, K_ALIGN)} weight bytes per kernel (max {MAX_KERNEL_BYTES}): K splitting not implemented"
  for n_t in (align(N, n_align), 512, 256, 128, 64, 32, 16):
    if n_t > align(N, n_align) or n_t % n_align: continue
    Kp = align(K + (n_t if residual else 0), K_ALIGN)
    if eb * Kp > MAX_KERNEL_BYTES: continue
    wb = ceil_div(n_t * Kp * eb, CBUF_BANK_BYTES)
    if wb + slack >= CBUF_BANKS: continue
    rows = (CBUF_BANKS - wb - slack) * CBUF_BANK_BYTES // (Kp * eb)
    rows = min(rows, MAX_ROWS) // MIN_ROWS * MIN_ROWS
    if rows >= MIN_ROWS: return min(rows, align(max(M, MIN_ROWS), MIN_ROWS)), n_t
  return f"K={K}: not even {MIN_ROWS} rows and {n_align} kernels fit the CBUF"

def matmul_task(t:MatmulTile, a_slot:int, a_off:int, b_slot:int, b_off:int, c_slot:int, c_off:int, relu:bool=False,
                clip:float|None=None, bs:XStageOp|None=None, ew:EwOperand|None=None, out_fp16:bool=False) -> regs.Task:
  """The register writes of one tile. Offsets are bytes into the slots' buffers. `relu`: the BS stage's ReLU unit
  clamps negative results to 0 (ALU and MUL bypassed; rocket_fp16_ew_ppu.md §3.4 "native ReLU in any X-stage").
  `clip` (with relu): its ReLUX also clamps results above `clip` (ReLU6). ⚠ The ReLUX encoding (RELU_BYPASS 0,
  RELUX_EN 1, compare value an fp32 bit pattern in float mode) is inferred from the TRM and AB's encoding (§3.4), not
  confirmed on hardware; this is the one place it is programmed. `bs`: the whole BS stage instead of relu/clip.
  `ew`: the EW stage combines the result with a per-pixel operand read through DPU_RDMA (conv-fed, §2.3). `out_fp16`:
  the DPU narrows the result to fp16 (FP32TOFP16, round to nearest even assumed: §7.3 ⚠) and writes an fp16 cube."""
  assert bs is None or (not relu and clip is None), "relu/clip or bs, not both"
  bs = bs if bs is not None else XStageOp(relu=relu, clip=clip)
  M, K, N = t.M, t.K, t.N
  i8 = t.precision == "int8"
  assert not i8 or (ew is None and not out_fp16 and bs.mul is None and bs.add is None and bs.clip is None and
                    (not bs.relu or INT8["relu_in_bs"]) and N % INT8["n_align"] == 0), "int8 tasks: int32 out, ReLU only"
  prec, eb = (PREC_INT8, 1) if i8 else (PREC_FP16, 2)
  assert ew is None or M * 1 >= EW_MIN_PLANE_ATOMS, f"an EW task needs >= {EW_MIN_PLANE_ATOMS} output atoms per plane"
  w, addr = regs.write, regs.address
  plane = M * 1 * 16                                     # bytes of one output surface (W=1, H=M atoms)
  atoms = INT8["atoms"] if i8 else ATOMS_FP16_OUT if out_fp16 else ATOMS_FP32_OUT
  bs_regs, ew_regs = bs_fields(bs), ew_fields(ew)
  rdma = [v if isinstance(v, regs.AddressWrite) else w("DPU_RDMA", k, **v) for k, v in ew_rdma(ew, plane).items()]
  e: list = [
    w("DPU", "S_POINTER", POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    w("DPU_RDMA", "S_POINTER", POINTER_PP_EN=1, EXECUTER_PP_EN=1, POINTER_PP_MODE=1),
    # CNA: the feature (A) and weight (B) fetch
    w("CNA", "CONV_CON1", PROC_PRECISION=prec, IN_PRECISION=prec, CONV_MODE=0),
    w("CNA", "CONV_CON2", FEATURE_GRAINS=M + 1),
    w("CNA", "CONV_CON3", CONV_Y_STRIDE=1, CONV_X_STRIDE=1),
    w("CNA", "DATA_SIZE0", DATAIN_WIDTH=1, DATAIN_HEIGHT=M),
    w("CNA", "DATA_SIZE1", DATAIN_CHANNEL_REAL=K - 1, DATAIN_CHANNEL=K),
    w("CNA", "DATA_SIZE2", DATAOUT_WIDTH=1),
    w("CNA", "DATA_SIZE3", DATAOUT_ATOMICS=M),
    w("CNA", "WEIGHT_SIZE0", WEIGHT_BYTES=eb * K * N),
    w("CNA", "WEIGHT_SIZE1", WEIGHT_BYTES_PER_KERNEL=eb * K),
    w("CNA", "WEIGHT_SIZE2", WEIGHT_WIDTH=1, WEIGHT_HEIGHT=1, WEIGHT_KERNELS=N),
    w("CNA", "CBUF_CON0", DATA_BANK=t.data_banks, WEIGHT_BANK=CBUF_BANKS - t.data_banks),
    w("CNA", "CBUF_CON1", DATA_ENTRIES=ceil_div(K * eb, 64)),   # ceil(W*C*bytes/64) (§1.5)
    w("CNA", "CVT_CON0", DATA_SIGN=1, CVT_TYPE=1, CVT_BYPASS=1),
    *[w("CNA", f"CVT_CON{i}", **{f"CVT_SCALE{i-1}": ONE_SCALE}) for i in range(1, 5)],
    w("CNA", "DMA_CON0", WEIGHT_BURST_LEN=DMA_BURST_16, DATA_BURST_LEN=DMA_BURST_16),
    w("CNA", "DMA_CON1", LINE_STRIDE=4 * 1),                # 4*W
    w("CNA", "DMA_CON2", SURF_STRIDE=max(1 * (M - 4), 0)),  # W*(H-4)
    w("CNA", "FC_DATA_SIZE0", DMA_WIDTH=1, DMA_HEIGHT=M),
    w("CNA", "FC_DATA_SIZE1", DMA_CHANNEL=K),
    w("CNA", "PAD_CON0"), w("CNA", "PAD_CON1"), w("CNA", "FC_CON0"), w("CNA", "FC_CON1"), w("CNA", "FC_CON2"),
    w("CNA", "DCOMP_CTRL"), w("CNA", "DCOMP_REGNUM"), w("CNA", "CVT_CON5"),
    addr("CNA", "FEATURE_DATA_ADDR", a_slot, a_off),
    addr("CNA", "DCOMP_ADDR0", b_slot, b_off),
    # CORE: the MAC array
    w("CORE", "MISC_CFG", PROC_PRECISION=prec, QD_EN=INT8["qd_en"] if i8 else 1),
    w("CORE", "DATAOUT_SIZE_0", DATAOUT_HEIGHT=M - 1, DATAOUT_WIDTH=0),
    w("CORE", "DATAOUT_SIZE_1", DATAOUT_CHANNEL=N - 1),
    w("CORE", "CLIP_TRUNCATE"), w("CORE", "UNDOC_3030"),
    # DPU: all stages bypassed, fp32 result to memory
    w("DPU", "FEATURE_MODE_CFG", BURST_LEN=DMA_BURST_16, OUTPUT_MODE=OUTPUT_TO_MEMORY),
    w("DPU", "DATA_FORMAT", OUT_PRECISION=PREC_INT32 if i8 else PREC_FP16 if out_fp16 else PREC_FP32, IN_PRECISION=prec, PROC_PRECISION=prec),
    w("DPU", "OFFSET_PEND"),
    addr("DPU", "DST_BASE_ADDR", c_slot, c_off),
    w("DPU", "DST_SURF_STRIDE", DST_SURF_STRIDE=M * 1 * 16),
    w("DPU", "DATA_CUBE_WIDTH", WIDTH=0),
    w("DPU", "DATA_CUBE_HEIGHT", HEIGHT=M - 1),
    w("DPU", "DATA_CUBE_NOTCH_ADDR"),
    w("DPU", "DATA_CUBE_CHANNEL", ORIG_CHANNEL=N - 1, CHANNEL=N - 1),
    *[w("DPU", reg, **f) for reg, f in bs_regs.items()],
    w("DPU", "BS_OW_CFG", SIZE_E_2=atoms - 1, SIZE_E_1=atoms - 1, SIZE_E_0=atoms - 1, OD_BYPASS=1),
    w("DPU", "BS_OW_OP"),
    w("DPU", "WDMA_SIZE_0", CHANNEL_WDMA=N - 1),
    w("DPU", "WDMA_SIZE_1", HEIGHT_WDMA=M - 1, WIDTH_WDMA=0),
    w("DPU", "BN_CFG", **{k.replace("BS_", "BN_"): x for k, x in BS_BN_BYPASS.items()}),
    w("DPU", "BN_ALU_CFG"), w("DPU", "BN_MUL_CFG"), w("DPU", "BN_RELUX_CMP_VALUE"),
    w("DPU", "EW_CFG", **ew_regs["EW_CFG"]),
    w("DPU", "EW_CVT_OFFSET_VALUE"), w("DPU", "EW_CVT_SCALE_VALUE", EW_OP_CVT_SCALE=ONE_SCALE), w("DPU", "EW_RELUX_CMP_VALUE", **ew_regs["EW_RELUX_CMP_VALUE"]),
    w("DPU", "OUT_CVT_OFFSET"), w("DPU", "OUT_CVT_SCALE", FP32TOFP16_EN=int(out_fp16), OUT_CVT_SCALE=ONE_SCALE), w("DPU", "OUT_CVT_SHIFT"),
    w("DPU", "SURFACE_ADD", SURF_ADD=M * 1 * 16 * atoms),
    w("DPU", "UNDOC_40C4"),
    w("DPU_RDMA", "DATA_CUBE_WIDTH", WIDTH=0),
    w("DPU_RDMA", "DATA_CUBE_HEIGHT", HEIGHT=M - 1),
    w("DPU_RDMA", "DATA_CUBE_CHANNEL", CHANNEL=N - 1),
    *rdma,
    w("DPU_RDMA", "BRDMA_CFG"), w("DPU_RDMA", "NRDMA_CFG"), w("DPU_RDMA", "BS_BASE_ADDR"), w("DPU_RDMA", "BN_BASE_ADDR"),
    w("DPU_RDMA", "SRC_DMA_CFG"), w("DPU_RDMA", "PAD_CFG"),
    w("DPU_RDMA", "WEIGHT", E_WEIGHT=1, N_WEIGHT=1, B_WEIGHT=1, M_WEIGHT=1),
  ]
  return regs.Task(e, regs.MESA_CONV_ENABLE)
