"""Mesa Teflon's uint8 CONV_2D / DEPTHWISE_CONV_2D on the RK3588 NPU, rebuilt from the facts.

Reproduces, in our own Python, what Mesa's Gallium `rocket` driver produces for one convolution operation:

  * input buffer      rkt_ml.c rkt_ml_subgraph_invoke: NC1HWC2 int8 (q - 0x80), pad channels zi - 0x80;
                      C == 1: raw uint8 rows of max(W, 16) bytes padded with zi; C == 1 and OC == 1: verbatim copy
  * weights           rkt_coefs.c rkt_fill_weights (the oc1/ic1/x/y/oc2/ic2 loop, rocket_hw.md §5.2)
  * biases            rkt_coefs.c rkt_fill_biases + calculate_bias_correction (§5.3), truncate_bits list
  * requantization    rkt_regcmd.c OUT_CVT (QNNPACK formula, §5.7)
  * task split        rkt_task.c rkt_split_tasks / fill_task (§5.6)
  * regcmd            rkt_regcmd.c fill_first_regcmd: 130 entries per task in Mesa's order (§3.5), values by
                      Mesa's formulas (§4), the 4-entry PC tail (§3.3) patched by rkt_ml.c compile_operation
  * jobs              rkt_ml.c: all tasks in one job if the weights stay in CBUF, else one job per task
  * output decode     rkt_ml.c rkt_ml_subgraph_read_outputs (+ 0x80)

Sources read: bminor/mesa-mesa @5b829658 src/gallium/drivers/rocket/{rkt_regcmd.c, rkt_coefs.c, rkt_task.c,
rkt_ml.h} and rkt_ml.c @17355f71; sailfishos-mirror/mesa rkt_task.c @1d4d1fc6 (newer main: identical except the
padding, which comes explicitly from Teflon there; both agree on the square shapes Mesa supports). Register field
positions: Mesa registers.xml (allbilly/rk3588 experimental/registers.xml is the same file).

Not reproduced: the fused ADD (add_tensor / addition_input paths, with their hard-coded scale tables) and
per-axis quantization (Mesa rejects it). Mesa swaps H and W (it calls TFLite dims[1] "width"): it is correct only
for square inputs, kernels and padding, so `build()` accepts square shapes only.

Mesa naming, kept below where behaviour depends on it: Wm = dims[1] (TFLite H), Hm = dims[2] (TFLite W),
KWm = weight dims[1] (KH), KHm = weight dims[2] (KW); for the square shapes accepted Wm == Hm and KWm == KHm.
"""
from __future__ import annotations
from dataclasses import dataclass, field, replace
import struct
import numpy as np

from .stream import Addr, Buffer, Reg, Stream, align, ceil_div, fld, raw_entry, U32

SOURCE = ("Mesa src/gallium/drivers/rocket: rkt_regcmd.c fill_first_regcmd, rkt_task.c rkt_split_tasks/fill_task, "
          "rkt_coefs.c rkt_fill_weights/rkt_fill_biases, rkt_ml.c (bminor/mesa-mesa @5b829658, rkt_ml.c @17355f71)")

# rkt_ml.h (NVDLA-derived CBUF constants)
CBUF_BANK_SIZE, CBUF_BANKS, CBUF_ENTRIES_PER_BANK = 32768, 12, 256
CBUF_ENTRY_SIZE = CBUF_BANK_SIZE // CBUF_ENTRIES_PER_BANK  # 128
FEATURE_ATOMIC_SIZE, WEIGHT_ATOMIC_SIZE, ATOMIC_K_SIZE = 16, 32, 16

# rkt_coefs.c rkt_fill_biases: weight scales (float bit patterns, from blob traces) that get truncate_bits = 1.
TRUNCATE_WEIGHT_SCALE_BITS = frozenset({
  0x3a88323f, 0x3c0060de, 0x3c06022d, 0x3c1642e3, 0x3c1e3f51, 0x3c5c8aa8, 0x3c615e93, 0x3c7326a2,
  0x3c783013, 0x3d1748e6, 0x3d282992, 0x3d2e87ae, 0x3d77f5f6, 0x3a9a5956, 0x3caebc56})

# Targets: rkt_get_target(reg) + 0x1 (registers.xml domains PC 0x100, CNA 0x200, CORE 0x800, DPU 0x1000,
# DPU_RDMA 0x2000), rocket_hw.md §3.1.
T_PC, T_CNA, T_CORE, T_DPU, T_RDMA = 0x0101, 0x0201, 0x0801, 0x1001, 0x2001
OP_ENABLE_TARGET, OP_ENABLE_OFFSET = 0x0081, 0x0008  # emit_raw(regs, 0x81, REG_PC_OPERATION_ENABLE, ...)
MARKER_WORD = 0x0041000000000000                   # "TRM: before op_en, 64'h0041_xxxx_xxxx_xxxx must be set"
CONV_OP_ENABLE = fld(14, 1, 31) | fld(1, 0, 0)     # PC_OPERATION_ENABLE_RESERVED_0(14) | OP_EN(1) = 0x1D
CONV_OP_ENABLE_ENTRY = (OP_ENABLE_TARGET << 48) | (CONV_OP_ENABLE << 16) | OP_ENABLE_OFFSET  # 0x0081_0000001D_0008
ENTRIES_PER_TASK = 130

def f32(x) -> np.float32: return np.float32(x)
def f32_bits(x) -> int: return struct.unpack("<I", struct.pack("<f", float(np.float32(x))))[0]
def s32(x:int) -> int:
  x &= U32
  return x - (1 << 32) if x & 0x8000_0000 else x
def c_div(a:int, b:int) -> int:
  """C integer division (truncates toward zero)."""
  q = abs(a) // abs(b)
  return q if (a >= 0) == (b > 0) else -q

# ----------------------------------------------------------------------------------------------------------
# The problem (TFLite terms)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QConvProblem:
  """A per-tensor uint8 TFLite convolution. input (H, W, C) or (1, H, W, C) uint8; weights OHWI (OC, KH, KW, C)
  uint8, or (1, KH, KW, C) for depthwise (depth multiplier 1: OC == C); bias (OC,) int32."""
  input: np.ndarray
  weights: np.ndarray
  bias: np.ndarray
  input_scale: float
  input_zero_point: int
  weight_scale: float
  weight_zero_point: int
  output_scale: float
  output_zero_point: int
  stride: int = 1
  padding: str = "SAME"   # "SAME" or "VALID"
  depthwise: bool = False

  def __post_init__(self):
    x = np.asarray(self.input)
    if x.ndim == 4:
      assert x.shape[0] == 1, "batch 1 only (Mesa)"
      x = x[0]
    object.__setattr__(self, "input", np.ascontiguousarray(x, dtype=np.uint8))
    object.__setattr__(self, "weights", np.ascontiguousarray(self.weights, dtype=np.uint8))
    object.__setattr__(self, "bias", np.ascontiguousarray(self.bias, dtype=np.int32))
    assert self.padding in ("SAME", "VALID")
    assert self.weights.ndim == 4 and self.input.ndim == 3
    if self.depthwise:
      assert self.weights.shape[0] == 1 and self.weights.shape[3] == self.C, "depthwise weights (1, KH, KW, C), multiplier 1"
    else:
      assert self.weights.shape[3] == self.C, "weights OHWI with I == input channels"
    assert self.bias.shape == (self.OC,)
    for z in (self.input_zero_point, self.weight_zero_point, self.output_zero_point): assert 0 <= z <= 255

  H = property(lambda s: s.input.shape[0]); W = property(lambda s: s.input.shape[1]); C = property(lambda s: s.input.shape[2])
  KH = property(lambda s: s.weights.shape[1]); KW = property(lambda s: s.weights.shape[2])
  OC = property(lambda s: s.C if s.depthwise else s.weights.shape[0])

  def out_size(self, n:int, k:int) -> int:
    return ceil_div(n, self.stride) if self.padding == "SAME" else (n - k) // self.stride + 1
  @property
  def OH(self) -> int: return self.out_size(self.H, self.KH)
  @property
  def OW(self) -> int: return self.out_size(self.W, self.KW)
  def pads(self) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): TFLite SAME (total = max((out-1)*s + k - in, 0), before = total // 2), as
    Teflon's explicit padding gives it to newer Mesa; old Mesa's own calc_explicit_padding agrees on square shapes."""
    if self.padding == "VALID": return (0, 0, 0, 0)
    th = max((self.OH - 1) * self.stride + self.KH - self.H, 0)
    tw = max((self.OW - 1) * self.stride + self.KW - self.W, 0)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
  @property
  def real_multiplier(self) -> float: return float(self.input_scale) * float(self.weight_scale) / float(self.output_scale)

# ----------------------------------------------------------------------------------------------------------
# Mesa's operation / split_task structures (rkt_ml.h)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class MesaOp:
  depthwise: bool
  stride: int
  input_width: int; input_height: int; input_channels: int; input_zero_point: int; input_scale: np.float32
  output_width: int; output_height: int; output_channels: int; output_zero_point: int; output_scale: np.float32
  weights_width: int; weights_height: int; weights_zero_point: int; weights_scale: np.float32
  pad_top: int; pad_bottom: int; pad_left: int; pad_right: int
  truncate_bits: int = 0
  reuse_weights_cbuf: bool = False
  addition_input: bool = False   # fused ADD is not reproduced: always False / add_tensor == -1
  add_tensor: int = -1

@dataclass
class SplitTask:
  num: int = 0
  top_slice: int = 0; bottom_slice: int = 0; num_overlap_slices: int = 0; num_retain_slices: int = 0; convolutions: int = 0
  pad_top: int = 0; pad_bottom: int = 0; pad_left: int = 0; pad_right: int = 0
  stride_x: int = 0; stride_y: int = 0
  input_width: int = 0; input_height: int = 0; input_channels: int = 0; input_channels_real: int = 0
  input_zero_point: int = 0; input_scale: np.float32 = f32(0); input_data_entries: int = 0
  input_line_stride: int = 0; input_surface_stride: int = 0; input_offset: int = 0
  output_width: int = 0; output_height: int = 0; output_channels: int = 0; output_channels_real: int = 0
  output_zero_point: int = 0; output_scale: np.float32 = f32(0); output_surface_stride: int = 0; output_offset: int = 0
  weights_width: int = 0; weights_height: int = 0; weights_kernels: int = 0; weights_zero_point: int = 0
  weights_scale: np.float32 = f32(0)
  input_banks: int = 0; weights_banks: int = 0
  atomic_count: int = 0; surfaces_per_row: int = 0

def is_depthwise(p:QConvProblem) -> bool:
  """rkt_ml.c rkt_is_depthwise: TFLite depthwise AND C > 1 AND OC > 1."""
  return p.depthwise and p.C > 1 and p.OC > 1

def truncate_bits_for(weight_scale:float) -> int:
  """rkt_coefs.c rkt_fill_biases: 1 for the 15 listed weight scales, else 0 (the '> 32 bits' retry never fires)."""
  return 1 if f32_bits(weight_scale) in TRUNCATE_WEIGHT_SCALE_BITS else 0

def mesa_operation(p:QConvProblem) -> MesaOp:
  """rkt_ml.c lower_convolution (TFLite dims[1] -> 'width', dims[2] -> 'height')."""
  pt, pb, pl, pr = p.pads()
  return MesaOp(depthwise=is_depthwise(p), stride=p.stride,
                input_width=p.H, input_height=p.W, input_channels=p.C, input_zero_point=p.input_zero_point, input_scale=f32(p.input_scale),
                output_width=p.OH, output_height=p.OW, output_channels=p.OC, output_zero_point=p.output_zero_point,
                output_scale=f32(p.output_scale),
                weights_width=p.KH, weights_height=p.KW, weights_zero_point=p.weight_zero_point, weights_scale=f32(p.weight_scale),
                pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr, truncate_bits=truncate_bits_for(p.weight_scale))

# ---- rkt_task.c ----
def calc_entries_per_slice(op:MesaOp) -> int:
  atomics_per_entry = CBUF_ENTRY_SIZE // FEATURE_ATOMIC_SIZE            # 8
  total_c_atomics = ceil_div(op.input_channels * 1, FEATURE_ATOMIC_SIZE)
  last_c_atomics = total_c_atomics % atomics_per_entry
  int_c_entries = (total_c_atomics // atomics_per_entry) * op.input_width
  frac_c_entries = op.input_width if last_c_atomics == 3 else ceil_div(last_c_atomics * op.input_width, atomics_per_entry)
  return int_c_entries + frac_c_entries

def calc_input_banks(op:MesaOp) -> int:
  return ceil_div(calc_entries_per_slice(op) * op.input_height, CBUF_ENTRIES_PER_BANK)

def calc_weights_banks(op:MesaOp) -> int:
  nbytes = op.weights_width * op.weights_height * op.input_channels
  if not op.depthwise: nbytes *= op.output_channels
  entries = ceil_div(nbytes, CBUF_ENTRY_SIZE)
  return ceil_div(entries, CBUF_ENTRIES_PER_BANK) + 1   # "Why do we need an extra bank?" (Mesa comment)

def calc_line_stride(width:int) -> int: return width * ATOMIC_K_SIZE * 1

def _float_to_int(x:np.float32) -> int:
  """C's float -> int conversion (truncation toward zero)."""
  return int(np.trunc(np.float64(x)))

def fill_task(op:MesaOp, task:SplitTask) -> None:
  """rkt_task.c fill_task. Note the input surface stride, the output surface stride and surfaces_per_row are
  computed from the FULL operation heights (fill_task runs before the split adjusts the task heights)."""
  task.stride_x = task.stride_y = op.stride
  task.input_width = op.input_width
  if task.input_width == 8 and (op.addition_input or op.add_tensor != -1): task.input_width *= 2   # (ADD only)
  task.input_height = op.input_height
  task.input_channels = align(max(op.input_channels, FEATURE_ATOMIC_SIZE), FEATURE_ATOMIC_SIZE)
  task.input_channels_real = op.input_channels
  task.input_zero_point, task.input_scale = op.input_zero_point, op.input_scale
  task.output_width, task.output_height = op.output_width, op.output_height
  task.output_channels_real = op.output_channels
  task.output_channels = align(max(op.output_channels, 32), 32)
  if op.depthwise:
    if task.output_channels_real <= 32: task.output_channels *= 2
    task.output_channels = align(task.output_channels, 64)
  task.output_zero_point, task.output_scale = op.output_zero_point, op.output_scale

  if task.input_channels_real == 1 and (task.output_channels_real > 1 or op.addition_input or op.add_tensor != -1):
    task.input_width = max(task.input_width, FEATURE_ATOMIC_SIZE)
    task.input_line_stride = max(calc_line_stride(op.input_width) // FEATURE_ATOMIC_SIZE, FEATURE_ATOMIC_SIZE)
    if op.input_channels == 32 and op.input_width == 80:   # dead code in Mesa (C is 1 here), kept for fidelity
      task.input_line_stride *= 4
      task.input_surface_stride = _float_to_int(f32(task.input_line_stride) * (f32(task.input_height) / f32(4) - f32(1)))
    else:
      task.input_surface_stride = _float_to_int(f32(task.input_line_stride) * (f32(task.input_height) - f32(1)))
  else:
    task.input_line_stride = calc_line_stride(op.input_width) // 4
    task.input_surface_stride = _float_to_int(f32(task.input_line_stride) * (f32(task.input_height) / f32(4) - f32(1)))

  if task.input_width == 8 and (op.addition_input or op.add_tensor != -1):   # dead (input_width was doubled above)
    task.input_line_stride //= 2
    task.input_surface_stride = 112

  task.output_surface_stride = calc_line_stride(op.output_width) * task.output_height // FEATURE_ATOMIC_SIZE

  if task.input_channels_real == 1: task.input_data_entries = task.input_width * task.input_height
  elif task.input_width == 40 and task.input_channels_real == 40: task.input_data_entries = 40
  else: task.input_data_entries = ceil_div(task.input_width * 2 * ceil_div(task.input_channels_real, FEATURE_ATOMIC_SIZE), 8)

  task.weights_width, task.weights_height = op.weights_width, op.weights_height
  task.weights_zero_point, task.weights_scale = op.weights_zero_point, op.weights_scale
  task.weights_kernels = 1 if op.depthwise else align(op.output_channels, 2)
  task.surfaces_per_row = task.output_width * task.output_height * 2
  if op.depthwise: task.surfaces_per_row *= 2

def split_tasks(op:MesaOp) -> list[SplitTask]:
  """rkt_task.c rkt_split_tasks ("mostly taken from NVDLA"); sets op.reuse_weights_cbuf."""
  entries_per_slice = calc_entries_per_slice(op)
  input_banks_required = calc_input_banks(op)
  weights_banks_required = calc_weights_banks(op)
  available_weights_banks = weights_banks_required
  available_input_banks = CBUF_BANKS - weights_banks_required
  pad_top, pad_bottom, pad_left, pad_right = op.pad_top, op.pad_bottom, op.pad_left, op.pad_right

  if weights_banks_required + 1 < CBUF_BANKS:
    op.reuse_weights_cbuf = True              # full weights, partial input
  else:
    op.reuse_weights_cbuf = False             # partial weights, partial input
    available_input_banks = 7
    available_weights_banks = CBUF_BANKS - available_input_banks

  if input_banks_required <= available_input_banks:   # full weights, full input
    task = SplitTask(num=0)
    fill_task(op, task)
    task.input_banks = input_banks_required
    task.weights_banks = CBUF_BANKS - task.input_banks
    task.input_height = op.input_height
    task.pad_top, task.pad_bottom, task.pad_left, task.pad_right = pad_top, pad_bottom, pad_left, pad_right
    task.atomic_count = task.output_width * task.output_height
    return [task]

  available_slices = (CBUF_ENTRIES_PER_BANK * available_input_banks) // entries_per_slice
  tasks: list[SplitTask] = []
  task = SplitTask(num=0)
  fill_task(op, task)
  task.input_banks, task.weights_banks = available_input_banks, available_weights_banks
  task.top_slice, task.bottom_slice = 0, available_slices - 1
  task.pad_top, task.pad_left, task.pad_right = pad_top, pad_left, pad_right
  tasks.append(task)

  KHm, s = op.weights_height, op.stride
  slice_ = KHm - pad_top - 1
  assert slice_ >= 0
  while slice_ < op.input_height:
    prev = tasks[-1]
    while slice_ <= prev.bottom_slice: slice_ += s
    if slice_ > prev.bottom_slice: slice_ -= s
    task = SplitTask(num=len(tasks))
    fill_task(op, task)
    task.top_slice = min(slice_, prev.bottom_slice) - (KHm - 1) + s
    assert task.top_slice >= 0, "unsigned wrap in rkt_split_tasks (not expected for shapes that need a split)"
    task.bottom_slice = task.top_slice + available_slices - 1
    task.pad_left, task.pad_right = pad_left, pad_right
    if task.bottom_slice >= op.input_height - 1:   # the last one
      task.bottom_slice = op.input_height - 1
      task.pad_bottom = pad_bottom
      tasks.append(task)
      break
    slice_ = task.top_slice + KHm - 1
    tasks.append(task)

  last = tasks[-1]
  if last.top_slice >= op.input_height or last.bottom_slice >= op.input_height + pad_bottom: tasks.pop()

  for i in range(1, len(tasks)):   # overlap between consecutive chunks
    prev, cur = tasks[i - 1], tasks[i]
    if prev.bottom_slice >= cur.top_slice:
      cur.num_overlap_slices = prev.bottom_slice - cur.top_slice + 1
      prev.num_retain_slices = cur.num_overlap_slices
    else:
      cur.num_overlap_slices = prev.num_retain_slices = 0

  output_height_processed = 0
  for cur in tasks:
    sl = cur.top_slice + (op.weights_height - 1) - cur.pad_top
    while sl <= cur.bottom_slice + cur.pad_bottom:
      sl += s
      cur.convolutions += 1
    cur.bottom_slice = min(cur.bottom_slice, op.input_height - 1)
    cur.input_height = cur.bottom_slice - cur.top_slice + 1
    cur.output_width = (cur.input_width + cur.pad_left + cur.pad_right - op.weights_width) // s + 1
    num = cur.input_height + cur.pad_top + cur.pad_bottom - op.weights_height
    assert num >= 0, "unsigned wrap in rkt_split_tasks output height"
    cur.output_height = num // s + 1
    cur.atomic_count = cur.output_width * cur.output_height
    cur.input_offset = calc_line_stride(op.input_width) * cur.top_slice
    cur.output_offset = calc_line_stride(op.output_width) * output_height_processed
    cur.input_banks, cur.weights_banks = available_input_banks, available_weights_banks
    output_height_processed += cur.output_height
  return tasks

# ----------------------------------------------------------------------------------------------------------
# Buffers: input, weights, biases, output (rkt_ml.c, rkt_coefs.c)
# ----------------------------------------------------------------------------------------------------------

def input_buffer_size(p:QConvProblem) -> int:
  """rkt_ml.c rkt_ml_subgraph_create: Wm * Hm * ceil(C/16) * 2 * 16."""
  return p.H * p.W * ceil_div(p.C, FEATURE_ATOMIC_SIZE) * 2 * FEATURE_ATOMIC_SIZE

def input_mode(p:QConvProblem) -> str:
  """'verbatim' (C == 1, OC == 1: pipe_buffer_copy of the uint8 tensor), 'rows' (C == 1: raw uint8 rows of
  max(W, 16) bytes padded with zi, converted by the CNA's CVT unit), or 'nc1hwc2' (everything else)."""
  if p.C == 1 and p.OC == 1: return "verbatim"
  return "rows" if p.C == 1 else "nc1hwc2"

def pack_input(p:QConvProblem) -> bytes:
  """rkt_ml.c rkt_ml_subgraph_invoke. nc1hwc2: byte (u, x<Wm, y<Hm, c<16) = q[x][y][16u+c] - 0x80, channels >= C
  hold zi - 0x80 (uint8 arithmetic, i.e. XOR 0x80)."""
  q, zi = p.input, p.input_zero_point
  mode = input_mode(p)
  if mode == "verbatim": return q.tobytes()
  if mode == "rows":
    rows = np.full((p.H, max(p.W, FEATURE_ATOMIC_SIZE)), zi, dtype=np.uint8)
    rows[:, :p.W] = q[:, :, 0]
    return rows.tobytes()
  groups = ceil_div(p.C, FEATURE_ATOMIC_SIZE)
  cube = np.full((p.H, p.W, groups * FEATURE_ATOMIC_SIZE), (zi - 0x80) & 0xFF, dtype=np.uint8)
  cube[:, :, :p.C] = q ^ 0x80
  return np.ascontiguousarray(cube.reshape(p.H, p.W, groups, FEATURE_ATOMIC_SIZE).transpose(2, 0, 1, 3)).tobytes()

def unpack_input(p:QConvProblem, buf:bytes) -> np.ndarray:
  """Inverse of pack_input: buffer bytes -> uint8 (H, W, C)."""
  b = np.frombuffer(buf, dtype=np.uint8)
  mode = input_mode(p)
  if mode == "verbatim": return b[:p.H * p.W].reshape(p.H, p.W, 1).copy()
  if mode == "rows": return b[:p.H * max(p.W, 16)].reshape(p.H, max(p.W, 16))[:, :p.W, None].copy()
  groups = ceil_div(p.C, FEATURE_ATOMIC_SIZE)
  cube = b[:groups * p.H * p.W * 16].reshape(groups, p.H, p.W, 16).transpose(1, 2, 0, 3).reshape(p.H, p.W, groups * 16)
  return (cube[:, :, :p.C] ^ 0x80).copy()

def weights_buffer_size(p:QConvProblem) -> int:
  """rkt_fill_weights: KWm * KHm * OCw * align(max(C, 16), 32) * 2 (OCw = align(OC, 2), 1 for depthwise)."""
  ocw = 1 if is_depthwise(p) else align(p.OC, 2)
  return p.KH * p.KW * ocw * align(max(p.C, FEATURE_ATOMIC_SIZE), WEIGHT_ATOMIC_SIZE) * 2

ZERO, WZP = -1, -2   # weight-loop codes: a 0x00 byte, a (zw - 0x80) pad byte; codes >= 0 index the OHWI tensor

def weight_codes(p:QConvProblem) -> np.ndarray:
  """rkt_coefs.c rkt_fill_weights, as a list of codes (one per emitted byte, in emission order)."""
  KWm, KHm = p.KH, p.KW                    # weights dims[1], dims[2]
  C_real, OC_real = p.C, p.OC
  dw = is_depthwise(p)
  ic_n = max(C_real, FEATURE_ATOMIC_SIZE)
  oc_n = 1 if dw else align(OC_real, 2)
  group = WEIGHT_ATOMIC_SIZE * (2 if dw else 1)
  ic1_n, ic2_n = ceil_div(ic_n, group), min(ic_n, group)
  codes = []
  for oc1 in range(ceil_div(oc_n, WEIGHT_ATOMIC_SIZE)):
    for ic1 in range(ic1_n):
      for x in range(KWm):
        for y in range(KHm):
          for oc2 in range(min(oc_n, WEIGHT_ATOMIC_SIZE)):
            for ic2 in range(ic2_n):
              oc, ic = oc1 * WEIGHT_ATOMIC_SIZE + oc2, ic1 * group + ic2
              if OC_real > 2 and oc >= align(OC_real, 2): continue
              if oc >= OC_real: codes.append(ZERO)
              elif ic >= C_real:
                if ic2 < 16 or (C_real % 32) > 16: codes.append(WZP)
              else:
                # weights_in[oc][x][y][ic] on the OHWI tensor (depthwise: oc == 0 on (1, KH, KW, C))
                codes.append(((oc * KWm + x) * KHm + y) * C_real + ic)
  return np.array(codes, dtype=np.int64)

def pack_weights(p:QConvProblem) -> bytes:
  codes = weight_codes(p)
  flat = p.weights.reshape(-1)
  out = np.zeros(len(codes), dtype=np.uint8)
  real = codes >= 0
  out[real] = flat[codes[real]] ^ 0x80                       # weights_in[...] - 0x80
  out[codes == WZP] = (p.weight_zero_point - 0x80) & 0xFF    # zero_point - 0x80
  return out.tobytes()

def unpack_weights(p:QConvProblem, buf:bytes) -> np.ndarray:
  """Inverse mapping of the same loop: packed bytes -> the OHWI (depthwise: (1, KH, KW, C)) uint8 tensor."""
  codes = weight_codes(p)
  b = np.frombuffer(buf, dtype=np.uint8)[:len(codes)]
  out = np.zeros(p.weights.size, dtype=np.uint8)
  real = codes >= 0
  out[codes[real]] = b[real] ^ 0x80
  return out.reshape(p.weights.shape)

def weight_hw_layout(p:QConvProblem) -> np.ndarray:
  """The dense layout the CNA is programmed to read (WEIGHT_SIZE0/1/2, §5.2): kernel groups of 32 (depthwise: one
  'kernel'), channel groups of G = 32 (depthwise 64) over ICa = align(max(C,16),16) channels; block (oc1, ic1) =
  [KWm][KHm][nk][nc] with nk = min(32, kernels - 32*oc1), nc = min(G, ICa - G*ic1). Returned as codes like
  weight_codes. Mesa's loop emits exactly this except for the ragged channel counts (see weights_ragged)."""
  KWm, KHm = p.KH, p.KW
  dw = is_depthwise(p)
  ica = align(max(p.C, 16), 16)
  kernels = 1 if dw else align(p.OC, 2)
  G = 64 if dw else 32
  codes = []
  for oc1 in range(ceil_div(kernels, 32)):
    nk = min(32, kernels - 32 * oc1)
    for ic1 in range(ceil_div(ica, G)):
      nc = min(G, ica - G * ic1)
      for x in range(KWm):
        for y in range(KHm):
          for k in range(nk):
            for c in range(nc):
              oc, ic = 32 * oc1 + k, G * ic1 + c
              if oc >= p.OC: codes.append(ZERO)
              elif ic >= p.C: codes.append(WZP)
              else: codes.append(((oc * KWm + x) * KHm + y) * p.C + ic)
  return np.array(codes, dtype=np.int64)

def weights_ragged(p:QConvProblem) -> bool:
  """True when Mesa's loop does not emit the dense layout the registers declare (rocket_hw.md §5.2 ⚠: e.g. 16 < C
  < 32 not a multiple of 16; depthwise C < 64 not a multiple of 16 or C mod 64 in 33..47 with C mod 32 <= 16).
  Whether the hardware tolerates this is unknown, so emulator fidelity tests avoid these channel counts."""
  a, b = weight_codes(p), weight_hw_layout(p)
  if len(a) != len(b): return True
  # padding bytes are interchangeable only if they carry the same value
  return not np.array_equal(a, b)

def bias_correction(p:QConvProblem, oc:int) -> int:
  """rkt_coefs.c calculate_bias_correction (unsigned C arithmetic, accumulated into an int32)."""
  zi, zw = p.input_zero_point, p.weight_zero_point
  w = p.weights.astype(np.int64)
  if is_depthwise(p): corr = int(np.sum((w[0, :, :, oc] - zw) * (zi - 0x80)))
  else: corr = int(np.sum((w[oc] - zw) * (zi - 0x80)))
  return s32(corr)

def pack_biases(p:QConvProblem) -> bytes:
  """rkt_fill_biases: biases[oc] = (bias[oc] - corr[oc]) / (1 << truncate_bits) (C int division), int32 LE."""
  t = truncate_bits_for(p.weight_scale)
  vals = [s32(c_div(s32(int(p.bias[oc]) - bias_correction(p, oc)), 1 << t)) for oc in range(p.OC)]
  return np.array(vals, dtype="<i4").tobytes()

def output_buffer_size(p:QConvProblem) -> int:
  """rkt_ml.c calc_raw_output_size: OWm * OHm * ceil(OC/16) * 2 * 16."""
  return p.OH * p.OW * ceil_div(p.OC, FEATURE_ATOMIC_SIZE) * 2 * FEATURE_ATOMIC_SIZE

def decode_output(p:QConvProblem, buf:bytes) -> np.ndarray:
  """rkt_ml.c rkt_ml_subgraph_read_outputs: out[y][x][oc] = raw[oc/16][y][x][oc%16] + 0x80 -> uint8 (OH, OW, OC).
  (Mesa indexes raw as [g][output_height=dims2][output_width=dims1][16]: the same as [g][OH][OW] for square.)"""
  OWm, OHm = p.OH, p.OW
  groups = ceil_div(p.OC, FEATURE_ATOMIC_SIZE)
  raw = np.frombuffer(buf, dtype=np.uint8)[:groups * OHm * OWm * 16].reshape(groups, OHm, OWm, 16)
  out = raw.transpose(1, 2, 0, 3).reshape(OHm, OWm, groups * 16)[:, :, :p.OC]
  return (out ^ 0x80).copy()

def encode_output(p:QConvProblem, out:np.ndarray) -> bytes:
  """Inverse of decode_output (used by tests): uint8 (OH, OW, OC) -> raw NC1HWC2 int8 bytes (other bytes 0)."""
  groups = ceil_div(p.OC, FEATURE_ATOMIC_SIZE)
  cube = np.zeros((p.OH, p.OW, groups * 16), dtype=np.uint8)
  cube[:, :, :p.OC] = np.asarray(out, dtype=np.uint8) ^ 0x80
  raw = np.zeros(output_buffer_size(p), dtype=np.uint8)
  raw[:cube.size] = cube.reshape(p.OH, p.OW, groups, 16).transpose(2, 0, 1, 3).reshape(-1)
  return raw.tobytes()

# ----------------------------------------------------------------------------------------------------------
# Requantization (rkt_regcmd.c, OUT_CVT: QNNPACK requantization.h formula)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutCvt:
  offset: int     # OUT_CVT_OFFSET (zo - 0x80, 32-bit two's complement)
  scale: int      # OUT_CVT_SCALE[15:0]
  shift: int      # OUT_CVT_SHIFT[11:0] as written (already the "shift - 1" Mesa emits)
  multiplier: float  # the float32 conv_scale Mesa starts from

def out_cvt(p:QConvProblem) -> OutCvt:
  """conv_scale = (si * sw) / so in float32; bits = its pattern; shift = 127 + 31 - 32 - (bits >> 23) + 16, minus 1
  if truncate_bits; scale = ((bits >> 9) & 0x7FFF) + 1, |= 0x4000 if < 0x4000; emitted OUT_CVT_SHIFT(shift - 1)."""
  conv_scale = (f32(p.input_scale) * f32(p.weight_scale)) / f32(p.output_scale)
  bits = f32_bits(conv_scale)
  shift = 127 + 31 - 32 - (bits >> 23) + 16
  if truncate_bits_for(p.weight_scale) > 0: shift -= 1
  scale = ((bits >> 9) & 0x7FFF) + 1
  if scale < (1 << 14): scale |= 1 << 14
  return OutCvt(offset=(p.output_zero_point - 0x80) & U32, scale=fld(scale, 0, 15), shift=fld(shift - 1, 0, 11),
                multiplier=float(conv_scale))

def out_cvt_edge_bug(p:QConvProblem) -> bool:
  """§5.7 edge bug: E even and mantissa bits 22..9 all ones -> the +1 carries into 0x4000 and the scale is 2x too
  small. Fidelity tests against the TFLite reference exclude it (the hardware would faithfully be off)."""
  bits = f32_bits((f32(p.input_scale) * f32(p.weight_scale)) / f32(p.output_scale))
  return ((bits >> 9) & 0x7FFF) == 0x3FFF

# ----------------------------------------------------------------------------------------------------------
# The register stream (rkt_regcmd.c fill_first_regcmd)
# ----------------------------------------------------------------------------------------------------------

def pad_con1_value(p:QConvProblem, task:SplitTask, op:MesaOp) -> int:
  if task.weights_width >= 3 and task.input_zero_point == 0x0: v = 0xFFFF8080
  else: v = task.input_zero_point - 0x80
  if op.addition_input or op.add_tensor != -1: v = 0xFFFFFF80
  if op.depthwise and task.input_zero_point == 0x8B: v = 0x0B0B
  return v & U32

def task_entries(p:QConvProblem, op:MesaOp, tasks:list[SplitTask], i:int, slot_offsets:list[int]) -> list[Reg]:
  task, n_tasks = tasks[i], len(tasks)
  S = "rkt_regcmd.c fill_first_regcmd"
  R: list[Reg] = []
  def E(target:int, off:int, value, name:str, why:str=""): R.append(Reg(target, off, value, name, S + (f"; {why}" if why else "")))
  C1 = task.input_channels_real == 1

  con0 = fld(task.weights_banks, 4, 7) | fld(task.input_banks, 0, 3)
  if i > 0 and op.reuse_weights_cbuf: con0 |= fld(1, 13, 13)
  E(T_CNA, 0x1040, con0, "CNA_CBUF_CON0", "WEIGHT_BANK[7:4] | DATA_BANK[3:0] (| WEIGHT_REUSE[13] on tasks > 0 when reused)")
  E(T_CNA, 0x1104, 0, "CNA_DCOMP_REGNUM")
  E(T_CNA, 0x1100, 0, "CNA_DCOMP_CTRL")
  con1 = 0
  if C1: con1 |= fld(1, 30, 30) | fld(1, 29, 29) | fld(8, 12, 15)    # NONALIGN_DMA | GROUP_LINE_OFF | ARGB_IN(8)
  if op.depthwise: con1 |= fld(3, 0, 3)                                # CONV_MODE(3)
  E(T_CNA, 0x100C, con1, "CNA_CONV_CON1", "C==1: NONALIGN_DMA|GROUP_LINE_OFF|ARGB_IN=8; depthwise CONV_MODE=3")
  E(T_DPU, 0x4004, fld(1, 3, 3) | fld(1, 2, 2) | fld(1, 1, 1), "DPU_S_POINTER", "POINTER_PP_MODE|EXECUTER_PP_EN|POINTER_PP_EN = 0xE")
  E(T_RDMA, 0x5004, fld(1, 3, 3) | fld(1, 2, 2) | fld(1, 1, 1), "DPU_RDMA_S_POINTER", "0xE")
  E(T_CNA, 0x100C, con1, "CNA_CONV_CON1", "emitted twice")
  E(T_CNA, 0x1010, fld(50 + task.stride_y + 1, 4, 13), "CNA_CONV_CON2", "FEATURE_GRAINS = 50 + stride_y + 1 (Mesa magic)")
  E(T_CNA, 0x1014, fld(task.stride_x, 0, 2) | fld(task.stride_y, 3, 5), "CNA_CONV_CON3", "CONV_X_STRIDE | CONV_Y_STRIDE")
  E(T_CNA, 0x1020, fld(task.input_width, 16, 26) | fld(task.input_height, 0, 10), "CNA_DATA_SIZE0", "DATAIN_WIDTH (Mesa width = dims[1]) | DATAIN_HEIGHT")
  E(T_CNA, 0x1024, fld(task.input_channels_real - 1, 16, 29) | fld(task.input_channels, 0, 15), "CNA_DATA_SIZE1", "(C-1)<<16 | align(max(C,16),16)")
  E(T_CNA, 0x1028, fld(task.output_width, 0, 10), "CNA_DATA_SIZE2", "DATAOUT_WIDTH")
  E(T_CNA, 0x102C, fld(task.atomic_count, 0, 21), "CNA_DATA_SIZE3", "DATAOUT_ATOMICS = out_w*out_h")
  E(T_CNA, 0x1030, (task.weights_width * task.weights_height * task.input_channels * task.weights_kernels) & U32, "CNA_WEIGHT_SIZE0", "KWm*KHm*ICa*kernels")
  E(T_CNA, 0x1034, (task.weights_width * task.weights_height * task.input_channels) & U32, "CNA_WEIGHT_SIZE1", "KWm*KHm*ICa")
  E(T_CNA, 0x1038, fld(task.weights_width, 24, 28) | fld(task.weights_height, 16, 20) | fld(task.weights_kernels, 0, 13), "CNA_WEIGHT_SIZE2")
  E(T_CNA, 0x1040, con0, "CNA_CBUF_CON0", "emitted twice")
  E(T_CNA, 0x1044, fld(task.input_data_entries, 0, 13), "CNA_CBUF_CON1", "DATA_ENTRIES")
  if C1:
    tr, scale, offset = 14, 16384, 65408
    if op.addition_input or op.add_tensor != -1: tr, scale = 15, 32388
    E(T_CNA, 0x104C, fld(tr, 22, 27) | fld(tr, 16, 21) | fld(tr, 10, 15) | fld(tr, 4, 9), "CNA_CVT_CON0", "C==1: CVT_TRUNCATE_0..3 = 14")
    for k, off in enumerate((0x1050, 0x1054, 0x1058, 0x105C)):
      E(T_CNA, off, fld(scale, 16, 31) | fld(offset, 0, 15), f"CNA_CVT_CON{k + 1}", "C==1: CVT_SCALE 16384, CVT_OFFSET 0xFF80 (-128)")
  else:
    E(T_CNA, 0x104C, fld(1, 3, 3) | fld(1, 1, 1) | fld(1, 0, 0), "CNA_CVT_CON0", "DATA_SIGN|CVT_TYPE|CVT_BYPASS = 0xB")
    for k, off in enumerate((0x1050, 0x1054, 0x1058, 0x105C)):
      E(T_CNA, off, fld(1, 16, 31), f"CNA_CVT_CON{k + 1}", "CVT_SCALE 1")
  E(T_CNA, 0x1060, 0, "CNA_FC_CON0")
  E(T_CNA, 0x1064, 0, "CNA_FC_CON1")
  E(T_CNA, 0x1068, fld(task.pad_left, 4, 7) | fld(task.pad_top, 0, 3), "CNA_PAD_CON0", "PAD_LEFT | PAD_TOP")
  E(T_CNA, 0x1070, Addr("input", task.input_offset), "CNA_FEATURE_DATA_ADDR", "input IOVA + Wm*16*top_slice")
  E(T_CNA, 0x1074, 0, "CNA_FC_CON2")
  E(T_CNA, 0x1078, fld(15, 16, 19) | fld(15, 0, 3), "CNA_DMA_CON0", "WEIGHT_BURST_LEN 15 | DATA_BURST_LEN 15")
  E(T_CNA, 0x107C, fld(task.input_line_stride, 0, 27), "CNA_DMA_CON1", "LINE_STRIDE")
  E(T_CNA, 0x1080, fld(task.input_surface_stride, 0, 27), "CNA_DMA_CON2", "SURF_STRIDE (float math on the full op height, masked)")
  E(T_CNA, 0x1084, fld(op.input_width, 16, 29) | fld(task.input_height, 0, 10), "CNA_FC_DATA_SIZE0", "DMA_WIDTH = op width (not widened) | task height")
  E(T_CNA, 0x1088, fld(task.input_channels, 0, 15), "CNA_FC_DATA_SIZE1", "DMA_CHANNEL = ICa")
  E(T_CNA, 0x1100, 0, "CNA_DCOMP_CTRL")
  E(T_CNA, 0x1104, 0, "CNA_DCOMP_REGNUM")
  E(T_CNA, 0x1110, Addr("weights", 0), "CNA_DCOMP_ADDR0", "weights IOVA (the weight base address)")
  for k in range(16): E(T_CNA, 0x1140 + 4 * k, 0, f"CNA_DCOMP_AMOUNT{k}")
  E(T_CNA, 0x1180, 65535 if C1 else 0, "CNA_CVT_CON5", "PER_CHANNEL_CVT_EN: 0xFFFF for C==1")
  E(T_CNA, 0x1184, pad_con1_value(p, task, op), "CNA_PAD_CON1", "PAD_VALUE = zi-0x80 (overrides: 0xFFFF8080 if KWm>=3 && zi==0; 0x0B0B if dw && zi==0x8B)")
  E(T_CORE, 0x3010, fld(1, 0, 0) | (fld(1, 1, 1) if op.depthwise else 0), "CORE_MISC_CFG", "QD_EN (| DW_EN)")
  E(T_CORE, 0x3014, fld(task.output_height - 1, 16, 31) | fld(task.output_width - 1, 0, 15), "CORE_DATAOUT_SIZE_0")
  E(T_CORE, 0x3018, fld(task.output_channels - 1, 0, 15), "CORE_DATAOUT_SIZE_1", "OCa - 1")
  E(T_CORE, 0x301C, fld(op.truncate_bits, 0, 4), "CORE_CLIP_TRUNCATE", "truncate_bits")
  E(T_CORE, 0x3030, 0, "CORE_3030", "emit_raw(CORE|1, 0x3030, 0): undocumented")
  fm = fld(15, 5, 8) | fld(2, 1, 2) | (fld(3, 3, 4) if op.depthwise else 0)
  E(T_DPU, 0x400C, fm, "DPU_FEATURE_MODE_CFG", "BURST_LEN 15 | OUTPUT_MODE 2 (| CONV_MODE 3 dw): 0x1E4 / 0x1FC")
  E(T_DPU, 0x4010, 0, "DPU_DATA_FORMAT", "all int8")
  E(T_DPU, 0x4014, 0, "DPU_OFFSET_PEND")
  E(T_DPU, 0x4020, Addr("output", task.output_offset), "DPU_DST_BASE_ADDR", "output IOVA + OWm*16*rows_done")
  E(T_DPU, 0x4024, fld(task.output_surface_stride, 4, 31), "DPU_DST_SURF_STRIDE", "field OWm*OHm (full op): bytes per 16-ch surface")
  E(T_DPU, 0x4030, fld(task.output_width - 1, 0, 12), "DPU_DATA_CUBE_WIDTH")
  E(T_DPU, 0x4034, fld(task.output_height - 1, 0, 12), "DPU_DATA_CUBE_HEIGHT")
  E(T_DPU, 0x4038, 0, "DPU_DATA_CUBE_NOTCH_ADDR")
  E(T_DPU, 0x403C, fld(task.output_channels_real - 1, 16, 28) | fld(task.output_channels - 1, 0, 12), "DPU_DATA_CUBE_CHANNEL", "ORIG_CHANNEL OC-1 | CHANNEL OCa-1")
  E(T_DPU, 0x4040, fld(2, 16, 19) | fld(1, 8, 8) | fld(1, 6, 6) | fld(1, 4, 4), "DPU_BS_CFG", "ALU add, operand from BRDMA; RELU, MUL bypassed = 0x20150")
  E(T_DPU, 0x4044, 0, "DPU_BS_ALU_CFG")
  E(T_DPU, 0x4048, 0, "DPU_BS_MUL_CFG")
  E(T_DPU, 0x404C, 0, "DPU_BS_RELUX_CMP_VALUE")
  se = 3 if op.depthwise else 1
  E(T_DPU, 0x4050, fld(se, 8, 10) | fld(se, 5, 7) | fld(se, 2, 4), "DPU_BS_OW_CFG", "SIZE_E_2/1/0 = 1 (dw 3): 0x124 / 0x36C")
  E(T_DPU, 0x4054, fld(0x80 - task.weights_zero_point, 0, 15), "DPU_BS_OW_OP", "OW_OP = 0x80 - zw (CPEND: weight zero-point term)")
  E(T_DPU, 0x4058, fld(task.output_channels - 1, 0, 12), "DPU_WDMA_SIZE_0", "CHANNEL_WDMA = OCa - 1")
  E(T_DPU, 0x405C, fld(task.output_height - 1, 16, 28) | fld(task.output_width - 1, 0, 12), "DPU_WDMA_SIZE_1")
  E(T_DPU, 0x4060, fld(1, 6, 6) | fld(1, 4, 4) | fld(1, 1, 1) | fld(1, 0, 0), "DPU_BN_CFG", "BN stage bypassed = 0x53")
  E(T_DPU, 0x4064, 0, "DPU_BN_ALU_CFG")
  E(T_DPU, 0x4068, 0, "DPU_BN_MUL_CFG")
  E(T_DPU, 0x406C, 0, "DPU_BN_RELUX_CMP_VALUE")
  E(T_DPU, 0x4070, fld(1, 9, 9) | fld(1, 8, 8) | fld(1, 7, 7) | fld(1, 1, 1) | fld(1, 0, 0), "DPU_EW_CFG", "no ADD: EW bypassed = 0x383")
  E(T_DPU, 0x4074, 0, "DPU_EW_CVT_OFFSET_VALUE")
  E(T_DPU, 0x4078, fld(1, 0, 15), "DPU_EW_CVT_SCALE_VALUE", "EW_OP_CVT_SCALE 1")
  E(T_DPU, 0x407C, 0, "DPU_EW_RELUX_CMP_VALUE")
  cvt = out_cvt(p)
  E(T_DPU, 0x4080, cvt.offset, "DPU_OUT_CVT_OFFSET", "zo - 0x80")
  E(T_DPU, 0x4084, cvt.scale, "DPU_OUT_CVT_SCALE", "((bits>>9)&0x7FFF)+1, |0x4000 (QNNPACK)")
  E(T_DPU, 0x4088, cvt.shift, "DPU_OUT_CVT_SHIFT", "141 - E (-1 more with truncate_bits)")
  for k in range(8): E(T_DPU, 0x4090 + 4 * k, 0, f"DPU_EW_OP_VALUE_{k}")
  E(T_DPU, 0x40C0, fld(task.surfaces_per_row, 4, 31), "DPU_SURFACE_ADD", "field 2*out_w*out_h (dw 4*) of the full op")
  E(T_DPU, 0x40C4, 0, "DPU_40C4", "emit_raw(DPU|1, 0x40c4, 0): undocumented")
  for name, off in (("DPU_LUT_ACCESS_CFG", 0x4100), ("DPU_LUT_ACCESS_DATA", 0x4104), ("DPU_LUT_CFG", 0x4108), ("DPU_LUT_INFO", 0x410C),
                    ("DPU_LUT_LE_START", 0x4110), ("DPU_LUT_LE_END", 0x4114), ("DPU_LUT_LO_START", 0x4118), ("DPU_LUT_LO_END", 0x411C),
                    ("DPU_LUT_LE_SLOPE_SCALE", 0x4120), ("DPU_LUT_LE_SLOPE_SHIFT", 0x4124), ("DPU_LUT_LO_SLOPE_SCALE", 0x4128),
                    ("DPU_LUT_LO_SLOPE_SHIFT", 0x412C)):
    E(T_DPU, off, 0, name)
  E(T_RDMA, 0x500C, fld(task.output_width - 1, 0, 12), "DPU_RDMA_DATA_CUBE_WIDTH")
  E(T_RDMA, 0x5010, fld(task.output_height - 1, 0, 12), "DPU_RDMA_DATA_CUBE_HEIGHT")
  E(T_RDMA, 0x5014, fld(task.output_channels - 1, 0, 12), "DPU_RDMA_DATA_CUBE_CHANNEL")
  E(T_RDMA, 0x5018, 0, "DPU_RDMA_SRC_BASE_ADDR", "no ADD: 0")
  E(T_RDMA, 0x501C, fld(1, 1, 4), "DPU_RDMA_BRDMA_CFG", "BRDMA_DATA_USE = 1 (ALU operand = bias) -> 0x2")
  E(T_RDMA, 0x5020, Addr("bias", 0), "DPU_RDMA_BS_BASE_ADDR", "bias IOVA")
  E(T_RDMA, 0x5028, 0, "DPU_RDMA_NRDMA_CFG")
  E(T_RDMA, 0x502C, 0, "DPU_RDMA_BN_BASE_ADDR")
  E(T_RDMA, 0x5034, fld(1, 0, 0), "DPU_RDMA_ERDMA_CFG", "ERDMA_DISABLE")
  E(T_RDMA, 0x5038, 0, "DPU_RDMA_EW_BASE_ADDR")
  E(T_RDMA, 0x5040, 0, "DPU_RDMA_EW_SURF_STRIDE")
  rfm = fld(15, 11, 14) | fld(1, 4, 4) | (fld(3, 1, 2) if op.depthwise else 0)
  E(T_RDMA, 0x5044, rfm, "DPU_RDMA_FEATURE_MODE_CFG", "BURST_LEN 15 | MRDMA_DISABLE (| CONV_MODE 3 dw): 0x7810 / 0x7816")
  E(T_RDMA, 0x5048, 0, "DPU_RDMA_SRC_DMA_CFG")
  E(T_RDMA, 0x504C, 0, "DPU_RDMA_SURF_NOTCH", "no ADD: 0")
  E(T_RDMA, 0x5064, 0, "DPU_RDMA_PAD_CFG")
  E(T_RDMA, 0x5068, fld(1, 24, 31) | fld(1, 16, 23) | fld(1, 8, 15) | fld(1, 0, 7), "DPU_RDMA_WEIGHT", "E/N/B/M arbiter weights 1 = 0x01010101")
  E(T_RDMA, 0x506C, 0, "DPU_RDMA_EW_SURF_NOTCH")
  # PC tail (rocket_hw.md §3.3), patched by rkt_ml.c compile_operation for all but the last task of a multi-task op
  tail = "rkt_regcmd.c tail + rkt_ml.c compile_operation patch"
  if n_tasks == 1: R.append(raw_entry(0, "PC_TAIL_NOP", tail + ": raw 0 for a single-task op"))
  elif i < n_tasks - 1: R.append(Reg(T_PC, 0x0010, Addr("regcmd", slot_offsets[i + 1]), "PC_BASE_ADDRESS", tail + ": next task's list IOVA"))
  else: R.append(Reg(T_PC, 0x0010, 0, "PC_BASE_ADDRESS", tail + ": 0 on the last task"))
  amount = 0
  if n_tasks > 1 and i < n_tasks - 1: amount = align((ENTRIES_PER_TASK - 4) // 2, 2)   # regs_to_fetch of the next list
  R.append(Reg(T_PC, 0x0014, amount, "PC_REGISTER_AMOUNTS", tail + ": align((n_next-4)/2, 2) when chained, else 0"))
  R.append(raw_entry(MARKER_WORD, "PC_MARKER_0041", "TRM: 64'h0041_xxxx must precede op_en"))
  R.append(Reg(OP_ENABLE_TARGET, OP_ENABLE_OFFSET, CONV_OP_ENABLE, "PC_OPERATION_ENABLE", "op-enable: CNA|CORE|DPU|DPU_RDMA = 0x1D"))
  assert len(R) == ENTRIES_PER_TASK, len(R)
  return R

def assert_square(p:QConvProblem) -> None:
  assert p.H == p.W, f"Mesa programs only square inputs correctly (it swaps H and W): got {p.H}x{p.W}"
  assert p.KH == p.KW, f"Mesa programs only square kernels correctly: got {p.KH}x{p.KW}"
  pt, pb, pl, pr = p.pads()
  assert (pt, pb) == (pl, pr), "Mesa programs only square padding correctly"

def build(p:QConvProblem) -> Stream:
  """The whole Mesa operation: buffers, task split, 130-entry lists, jobs and the output decoder."""
  assert_square(p)
  assert not (p.depthwise and p.C == 1), "TFLite depthwise with C == 1 is lowered by Mesa as a normal conv reading " \
    "(1, KH, KW, OC) weights as OHWI: not reproduced"
  op = mesa_operation(p)
  tasks = split_tasks(op)
  slot = align(8 * ENTRIES_PER_TASK, 64)
  slot_offsets = [i * slot for i in range(len(tasks))]
  task_regs = [task_entries(p, op, tasks, i, slot_offsets) for i in range(len(tasks))]

  groups_written = ceil_div(tasks[0].output_channels, FEATURE_ATOMIC_SIZE)   # the DPU writes OCa channels
  # every task writes, for each of the ceil(OCa/16) surfaces, its out_h rows of OWm pixels at its output offset
  out_extent = max(t.output_offset + (groups_written - 1) * t.output_surface_stride * 16 + t.output_height * t.output_width * 16
                   for t in tasks)
  bufs = {
    "input": Buffer("input", input_buffer_size(p), pack_input(p)),
    "weights": Buffer("weights", weights_buffer_size(p), pack_weights(p)),
    # BRDMA fetches one int32 per channel of the OCa-channel cube the DPU processes [inf]; Mesa relies on page rounding.
    "bias": Buffer("bias", p.OC * 4, pack_biases(p), alloc_size=tasks[0].output_channels * 4),
    # the DPU writes OCa (32/64-aligned) channels; Mesa's own size covers ceil(OC/16)*2 surfaces (page rounding does the rest)
    "output": Buffer("output", output_buffer_size(p), None, alloc_size=out_extent),
    "regcmd": Buffer("regcmd", Stream.regcmd_size_for([ENTRIES_PER_TASK] * len(tasks))),
  }
  jobs = [list(range(len(tasks)))] if op.reuse_weights_cbuf else [[i] for i in range(len(tasks))]
  return Stream(name=f"mesa_int8_conv_{p.H}x{p.W}x{p.C}_k{p.KH}s{p.stride}{p.padding[0]}_oc{p.OC}{'_dw' if op.depthwise else ''}",
                source=SOURCE, buffers=bufs, task_regs=task_regs, in_slots=("input",), out_slots=("output",),
                output_slot="output", decode=lambda b, p=p: decode_output(p, b), jobs=jobs,
                meta=dict(problem=p, op=op, split=tasks, out_cvt=out_cvt(p), input_mode=input_mode(p),
                          ragged=weights_ragged(p), edge_bug=out_cvt_edge_bug(p)))
