"""The emulator's block execution (tinygrad_rocket/emu/blocks.py and friends), driven through EmuFile + RocketDriver with
register programs built by our own encoder (tinygrad_rocket.ops over tinygrad_rocket.regs), run by the harness in
tinygrad_rocket.emu.programs.

These tests check the emulator's reading of every register field it reads (COVERAGE below, checked against
descs.DECODED_FIELDS), its numerics against independent references written here, and its failure modes (IOMMU
faults, hangs, refused configurations). Fidelity with other drivers' hardware-validated streams is tests/fidelity.
"""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from tinygrad_rocket import regs
from tinygrad_rocket.emu import Npu, programs as P
from tinygrad_rocket.ops.conv import ConvSpec, conv_program, conv_programs, row_split
from tinygrad_rocket.ops.elementwise import FLYING_ENABLE, flying_program
from tinygrad_rocket.ops.pool import PPU_ENABLE, ppu_program
from tinygrad_rocket.ops.program import PREC, Set, entries, override
from tinygrad_rocket.emu.descs import DECODED_FIELDS

IN, WT, OUT, BIAS, OPND = 0, 1, 2, 3, 4
SLOTS = dict(input=IN, weights=WT, output=OUT, bias=BIAS, operand=OPND)
SENTINEL = 0xA5
FAST = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
U24, U11 = 2.0 ** -24, 2.0 ** -11

# ------------------------------------------------------------------------------------------------------------------
# references (independent of the emulator's code)
# ------------------------------------------------------------------------------------------------------------------
def ref_conv(x, w, stride=(1, 1), pad=(0, 0), dil=(1, 1), out_hw=None, depthwise=False, pad_value=0.0, absolute=False):
  """float64 conv of x (C, H, W) with w (K, C, kh, kw) / depthwise (C, kh, kw); taps outside the input read pad_value
  (a scalar or one value per channel). Returns (out, window sum of x per output [direct: summed over channels])."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  if absolute: x, w = np.abs(x), np.abs(w)
  C, H, W = x.shape
  kh, kw = w.shape[-2:]
  (sy, sx), (pt, pl), (dy, dx) = stride, pad, dil
  OH, OW = out_hw or ((H + 2 * pt - dy * (kh - 1) - 1) // sy + 1, (W + 2 * pl - dx * (kw - 1) - 1) // sx + 1)
  nh, nw = (OH - 1) * sy + dy * (kh - 1) + 1, (OW - 1) * sx + dx * (kw - 1) + 1
  xp = np.empty((C, max(nh, pt + H), max(nw, pl + W)))
  xp[:] = np.broadcast_to(np.asarray(pad_value, np.float64).reshape(-1, 1, 1), (C, 1, 1))
  xp[:, pt:pt + H, pl:pl + W] = x
  K = C if depthwise else w.shape[0]
  out, S = np.zeros((K, OH, OW)), np.zeros((C, OH, OW))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i * dy:i * dy + (OH - 1) * sy + 1:sy, j * dx:j * dx + (OW - 1) * sx + 1:sx]
      S += patch
      out += patch * w[:, i, j][:, None, None] if depthwise else np.einsum("chw,kc->khw", patch, w[:, :, i, j])
  return out, (S if depthwise else S.sum(0))

def fp32_acc_bound(absum, exact, n, out):
  """Higham: products exact, fp32 sums (any order): |err| <= gamma_{n-1}*S*P + (P-1)|s| + eta."""
  g = (n - 1) * U24 / (1 - (n - 1) * U24)
  P_ = (1 + U24) * ((1 + U11) if out == "fp16" else 1)
  return g * absum * P_ + (P_ - 1) * np.abs(exact) + (2.0 ** -25 if out == "fp16" else 2.0 ** -150)

def rne(v): return np.round(np.asarray(v, np.float64))
def away(v): v = np.asarray(v, np.float64); return np.sign(v) * np.floor(np.abs(v) + 0.5)
def shr(x, s, rnd): return (away if rnd else rne)(np.asarray(x, np.float64) / 2.0 ** s)

# ------------------------------------------------------------------------------------------------------------------
# running programs
# ------------------------------------------------------------------------------------------------------------------
def conv_buffers(spec:ConvSpec, x, w, bias=None, out_size=None):
  b = {IN: P.pack_cube(x, spec.precision), WT: P.pack_weights(w, spec.precision, spec.depthwise),
       OUT: out_size or spec.OC * spec.OH * spec.OW * spec.out_bytes}
  if bias is not None: b[BIAS] = bias
  return b

def run_conv(spec:ConvSpec, x, w, overrides=None, bias=None, npu=None, buffers=None, enable=None, **kw):
  progs = [override(p, overrides) for p in conv_programs(spec, SLOTS, bias=bias is not None, **kw)]
  bufs = conv_buffers(spec, x, w, bias) | (buffers or {})
  return P.run_program(progs, bufs, [OUT], npu=npu, fill=SENTINEL, enable=enable)

def conv_out(r, spec:ConvSpec, surface_pitch=None):
  assert r.failure is None, r.failure
  return P.unpack_cube(r.out[OUT], spec.out, spec.OC, spec.OH, spec.OW, surface_pitch)

def rand16(rng, *shape, scale=1.0): return rng.uniform(-scale, scale, shape).astype(np.float16)
def rand8(rng, *shape): return rng.integers(-128, 128, shape).astype(np.int8)

def failure(r) -> str:
  assert r.failure is not None, "the job completed"
  return r.failure

# ------------------------------------------------------------------------------------------------------------------
# fp16 / bf16 / tf32 convolution
# ------------------------------------------------------------------------------------------------------------------
FP_CASES = [  # C, H, W, kernels, kh, kw, stride, pad, dilation, depthwise, out
  (32, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1), False, "fp32"),
  (32, 7, 5, 32, 3, 2, (2, 1), (1, 0), (1, 1), False, "fp16"),          # non-square input and kernel, stride in y
  (64, 6, 9, 20, 1, 1, (1, 1), (0, 0), (1, 1), False, "fp32"),          # 1x1, partial kernel group (20 of 32 -> 2 groups)
  (32, 11, 10, 16, 3, 3, (1, 2), (2, 2), (2, 2), False, "fp16"),        # dilation, stride in x
  (64, 9, 7, 64, 3, 3, (2, 2), (1, 1), (1, 1), True, "fp16"),           # depthwise, 2 channel groups of 32
  (48, 8, 6, 48, 5, 3, (1, 1), (2, 1), (1, 1), True, "fp16"),           # depthwise, partial channel group (32 + 16)
]

@pytest.mark.parametrize("case", FP_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}k{c[4]}{c[5]}{'dw' if c[9] else ''}{c[10]}")
def test_fp16_conv_against_float64(case):
  C, H, W, K, kh, kw, st_, pad, dil, dw, out = case
  spec = ConvSpec("fp16", C, H, W, K, kh, kw, st_, pad, dil, dw, out)
  rng = np.random.default_rng(hash(case) % 2**32)
  x, w = rand16(rng, C, H, W), rand16(rng, *((C, kh, kw) if dw else (K, C, kh, kw)))
  got = conv_out(run_conv(spec, x, w), spec).astype(np.float64)
  n_out = C if dw else K
  exact, _ = ref_conv(x, w, st_, pad, dil, (spec.OH, spec.OW), dw)
  absum, _ = ref_conv(x, w, st_, pad, dil, (spec.OH, spec.OW), dw, absolute=True)
  n = kh * kw * (1 if dw else C)
  assert np.all(np.abs(got[:n_out] - exact) <= fp32_acc_bound(absum, exact, n, out))
  assert np.all(got[n_out:] == 0)     # kernels past WEIGHT_KERNELS / channels past DATAIN_CHANNEL compute 0

def test_fp16_conv_split_into_row_tasks():
  """A layer whose input does not fit the CBUF, as row bands (input base moved by whole rows, surface strides of the
  whole tensors, pad only on the first band): the tasks together give the whole convolution."""
  spec = ConvSpec("fp16", 64, 48, 64, 32, 3, 3, (1, 1), (1, 1), out="fp16")
  assert len(row_split(spec)) > 1
  rng = np.random.default_rng(5)
  x, w = rand16(rng, 64, 48, 64), rand16(rng, 32, 64, 3, 3)
  r = run_conv(spec, x, w)
  got = conv_out(r, spec).astype(np.float64)
  exact, _ = ref_conv(x, w, pad=(1, 1))
  absum, _ = ref_conv(x, w, pad=(1, 1), absolute=True)
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, 9 * 64, "fp16"))
  assert r.stats[0].task_count == len(row_split(spec))

@FAST
@given(C=st.sampled_from([8, 32, 40]), H=st.integers(4, 9), W=st.integers(1, 9), K=st.integers(1, 33), kh=st.integers(1, 3),
       kw=st.integers(1, 3), sy=st.integers(1, 2), sx=st.integers(1, 2), pt=st.integers(0, 1), pl=st.integers(0, 1),
       out=st.sampled_from(["fp16", "fp32"]), seed=st.integers(0, 2**16))
def test_fp16_conv_property(C, H, W, K, kh, kw, sy, sx, pt, pl, out, seed):
  spec = ConvSpec("fp16", C, H, W, K, kh, kw, (sy, sx), (pt, pl), out=out)
  if spec.OH < 1 or spec.OW < 1: return
  rng = np.random.default_rng(seed)
  x, w = rand16(rng, C, H, W), rand16(rng, K, C, kh, kw)
  got = conv_out(run_conv(spec, x, w), spec).astype(np.float64)[:K]
  exact, _ = ref_conv(x, w, (sy, sx), (pt, pl), out_hw=(spec.OH, spec.OW))
  absum, _ = ref_conv(x, w, (sy, sx), (pt, pl), out_hw=(spec.OH, spec.OW), absolute=True)
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, kh * kw * C, out))

@pytest.mark.parametrize("prec", ["bf16", "tf32"])
def test_bf16_and_tf32_conv(prec):
  """bf16 (16-kernel groups, C2 8) and tf32 (fp32 container, C2 4, 16x16 groups, mantissa cut to 10 bits; DPU at
  fp32): exact products of the rounded operands, fp32 accumulation."""
  C = 32 if prec == "bf16" else 16
  spec = ConvSpec(prec, C, 6, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  rng = np.random.default_rng(1)
  x, w = rng.uniform(-2, 2, (C, 6, 5)).astype(np.float32), rng.uniform(-2, 2, (16, C, 3, 3)).astype(np.float32)
  keep = 0xFFFF0000 if prec == "bf16" else 0xFFFFE000
  xq, wq = [(a.view(np.uint32) & np.uint32(keep)).view(np.float32) for a in (x, w)]
  got = conv_out(run_conv(spec, x, w), spec).astype(np.float64)
  exact, _ = ref_conv(xq, wq, pad=(1, 1))
  absum, _ = ref_conv(xq, wq, pad=(1, 1), absolute=True)
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, 9 * C, "fp32"))
  assert not np.all(np.abs(got - ref_conv(x, w, pad=(1, 1))[0]) <= fp32_acc_bound(absum, exact, 9 * C, "fp32"))

def test_fp16_pad_value():
  """PAD_CON1: padding taps read the fp16 value in its low 16 bits (here 1.0 = 0x3C00)."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32", pad_value=0x3C00)
  rng = np.random.default_rng(2)
  x, w = rand16(rng, 32, 5, 5), rand16(rng, 16, 32, 3, 3)
  got = conv_out(run_conv(spec, x, w), spec).astype(np.float64)
  exact, _ = ref_conv(x, w, pad=(1, 1), pad_value=1.0)
  absum, _ = ref_conv(x, w, pad=(1, 1), pad_value=1.0, absolute=True)
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, 9 * 32, "fp32"))

def test_strided_feature_layout():
  """CNA addressing with LINE_STRIDE / SURF_STRIDE larger than dense: rows LINE_STRIDE/4 atoms apart, surfaces
  LINE_STRIDE + SURF_STRIDE atoms apart; the bytes in between are never read."""
  C, H, W = 32, 6, 5
  spec = ConvSpec("fp16", C, H, W, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  row_atoms, surf_atoms = W + 3, (W + 3) * H + 7
  rng = np.random.default_rng(3)
  x, w = rand16(rng, C, H, W), rand16(rng, 16, C, 3, 3)
  buf = np.full(surf_atoms * 16 * (C // 8), 0x7E, np.uint8)          # 0x7E7E: a large fp16 value in every gap
  dense = np.frombuffer(P.pack_cube(x, "fp16"), np.uint8).reshape(C // 8, H, W, 16)
  for s in range(C // 8):
    for h in range(H): buf[(s * surf_atoms + h * row_atoms) * 16:(s * surf_atoms + h * row_atoms + W) * 16] = dense[s, h].reshape(-1)
  ov = {("CNA", "DMA_CON1"): dict(LINE_STRIDE=4 * row_atoms), ("CNA", "DMA_CON2"): dict(SURF_STRIDE=surf_atoms - 4 * row_atoms)}
  got = conv_out(run_conv(spec, x, w, ov, buffers={IN: buf.tobytes()}), spec).astype(np.float64)
  exact, _ = ref_conv(x, w, pad=(1, 1))
  absum, _ = ref_conv(x, w, pad=(1, 1), absolute=True)
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, 9 * C, "fp32"))

def test_output_surface_stride_and_surface_add():
  """WDMA: surfaces DST_SURF_STRIDE bytes apart, kernel groups SURFACE_ADD apart; bytes in between untouched."""
  spec = ConvSpec("fp16", 32, 4, 4, 32, 1, 1, out="fp32")       # 2 kernel groups x 4 fp32 atoms = 8 surfaces
  pitch = (spec.OH * spec.OW + 3) * 16
  ov = {("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=pitch), ("DPU", "SURFACE_ADD"): dict(SURF_ADD=4 * pitch)}
  rng = np.random.default_rng(4)
  x, w = rand16(rng, 32, 4, 4), rand16(rng, 32, 32, 1, 1)
  r = run_conv(spec, x, w, ov, buffers={OUT: 8 * pitch})
  got = conv_out(r, spec, surface_pitch=pitch)
  exact, _ = ref_conv(x, w)
  assert np.allclose(got, exact, rtol=1e-5, atol=1e-5)
  gaps = np.frombuffer(r.out[OUT], np.uint8).reshape(8, pitch)[:, spec.OH * spec.OW * 16:]
  assert np.all(gaps == SENTINEL)

def test_matmul_as_1x1_conv():
  """The mtx512/gregordinary matmul shape: A[M,K] as a cube W=1, H=M, C=K; N kernels of 1x1xK."""
  M, K, N = 12, 64, 48
  spec = ConvSpec("fp16", K, M, 1, N, 1, 1, out="fp32")
  rng = np.random.default_rng(6)
  a, b = rand16(rng, M, K), rand16(rng, N, K)
  got = conv_out(run_conv(spec, a.T[:, :, None], b[:, :, None, None]), spec)[:N, :, 0].T
  exact = a.astype(np.float64) @ b.astype(np.float64).T
  absum = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T
  assert np.all(np.abs(got - exact) <= fp32_acc_bound(absum, exact, K, "fp32"))

# ------------------------------------------------------------------------------------------------------------------
# int8 convolution: exact integer datapath
# ------------------------------------------------------------------------------------------------------------------
def lane_pad(pad_raw:int, C:int, depthwise:bool) -> np.ndarray:
  """The pad value per channel: byte 0 of PAD_CON1, except (int8 depthwise, GN) odd channels among the first 32 of
  each 64 read byte 1."""
  b0, b1 = [((pad_raw >> s) & 0xFF) - (256 if (pad_raw >> s) & 0x80 else 0) for s in (0, 8)]
  c = np.arange(C)
  return np.where(depthwise & (c % 64 < 32) & (c % 2 == 1), b1, b0).astype(np.float64)

INT8_CASES = [  # C, H, W, K, k, stride, pad, depthwise, clip (truncate, round), cvt (scale, shift, offset, round), ow_op
  (16, 6, 7, 32, 3, (1, 1), (1, 1), False, (0, 0), (16384, 21, -3, 0), 37),
  (48, 5, 5, 40, 3, (2, 1), (1, 1), False, (1, 1), (-20000, 20, 5, 1), -12),     # 2 kernel groups, negative scale
  (64, 7, 6, 64, 3, (1, 2), (1, 0), True, (1, 0), (30000, 16, 0, 0), 90),         # depthwise, byte-lane pad value
  (80, 6, 6, 80, 5, (1, 1), (2, 2), True, (0, 0), (12345, 17, -100, 1), -5),     # 2 depthwise groups (64 + 16)
]

@pytest.mark.parametrize("case", INT8_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}k{c[4]}{'dw' if c[7] else ''}")
def test_int8_conv_exact(case):
  """acc = sum x*w + OW_OP*S (S: window sum, padding included) -> CLIP_TRUNCATE -> + bias (BRDMA) -> OUT_CVT
  round(acc*SCALE >> SHIFT) + OFFSET (signed 16-bit SCALE, CVT_ROUND tie rule) -> saturate int8. Exact."""
  C, H, W, K, k, st_, pad, dw, (t, tr), (sc, sh, off, cr), ow = case
  pad_raw = 0x0000E905 if not dw else 0xFFFF7F05      # bytes 0x05 / 0xE9 (direct), 0x05 / 0x7F (depthwise lanes)
  spec = ConvSpec("int8", C, H, W, K, k, k, st_, pad, depthwise=dw, out="int8", pad_value=pad_raw)
  rng = np.random.default_rng(C * 7 + H)
  x, w = rand8(rng, C, H, W), rand8(rng, *((C, k, k) if dw else (K, C, k, k)))
  bias = rng.integers(-40000, 40000, spec.OC).astype("<i4")
  ov = {("CORE", "CLIP_TRUNCATE"): dict(CLIP_TRUNCATE=t, ROUND_TYPE=tr), ("DPU", "OUT_CVT_SHIFT"): dict(CVT_ROUND=cr)}
  got = conv_out(run_conv(spec, x, w, ov, bias=bias.tobytes(), out_cvt=(sc, sh, off), ow_op=ow), spec).astype(np.int64)
  acc, S = ref_conv(x, w, st_, pad, out_hw=(spec.OH, spec.OW), depthwise=dw, pad_value=lane_pad(pad_raw, C, dw))
  n = C if dw else K
  full = np.zeros((spec.OC, spec.OH, spec.OW))
  full[:n] = acc
  if dw: full[:n] += ow * S
  else: full += ow * S[None]
  v = np.clip(shr(full, t, tr) + bias[:, None, None], -2**31, 2**31 - 1)
  want = np.clip(shr(v * sc, sh, cr) + off, -128, 127)
  assert np.array_equal(got, want)

@pytest.mark.parametrize("out", ["int32", "fp32"])
def test_int8_conv_raw_accumulator_output(out):
  """int8 -> int32 (saturated) / fp32 (exact cast of the int32): SIZE_E 7 / SURFACE_ADD x8 (8 atoms per 32 kernels)."""
  spec = ConvSpec("int8", 32, 5, 4, 64, 3, 3, (1, 1), (1, 1), out=out)
  rng = np.random.default_rng(9)
  x, w = rand8(rng, 32, 5, 4), rand8(rng, 64, 32, 3, 3)
  got = conv_out(run_conv(spec, x, w, out_cvt=(3, 1, 7)), spec).astype(np.float64)
  acc, _ = ref_conv(x, w, pad=(1, 1))
  assert np.array_equal(got, rne(acc * 3 / 2) + 7)

CVT_CASES = [  # (scale, offset, truncate, type, round, sign, enable)
  (16384, -128, 14, 0, 0, 0, 1),    # Mesa: q - 128
  (3, 5, 1, 1, 1, 0, 1),            # add first, half away
  (7, -9, 2, 0, 0, 1, 1),           # signed pixels, multiply first, half even
  (16384, -128, 14, 0, 0, 0, 0),    # PER_CHANNEL_CVT_EN bit 0 clear: raw bytes as int8
]

@pytest.mark.parametrize("cvt", CVT_CASES)
def test_int8_pixel_input(cvt):
  """ARGB_IN = 8 (1 byte per pixel, rows LINE_STRIDE bytes apart) through the CNA converter (CVT_CON0, CVT_CON1,
  CVT_CON5): y = round(x*scale >> truncate) + offset (type 0) or round((x + offset)*scale >> truncate) (type 1),
  saturated to int8; the atom's other channels are 0 and padding taps read PAD_CON1 on every channel."""
  scale, offset, trunc, typ, rnd, sign, en = cvt
  H, W, line = 6, 16, 20
  spec = ConvSpec("int8", 16, H, W, 32, 3, 3, (1, 1), (1, 1), out="int32", pad_value=0xFFFFFFF9)
  rng = np.random.default_rng(10)
  q = rng.integers(0, 256, (H, line), dtype=np.uint8)
  w = rand8(rng, 32, 16, 3, 3)
  ov = {("CNA", "CONV_CON1"): dict(NONALIGN_DMA=1, GROUP_LINE_OFF=1, ARGB_IN=8),
        ("CNA", "DMA_CON1"): dict(LINE_STRIDE=line), ("CNA", "DMA_CON2"): dict(SURF_STRIDE=line * (H - 1)),
        ("CNA", "CVT_CON0"): Set(CVT_TRUNCATE_0=trunc, DATA_SIGN=sign, ROUND_TYPE=rnd, CVT_TYPE=typ),
        ("CNA", "CVT_CON1"): dict(CVT_SCALE0=scale, CVT_OFFSET0=offset), ("CNA", "CVT_CON5"): dict(PER_CHANNEL_CVT_EN=en)}
  got = conv_out(run_conv(spec, np.zeros((16, H, W), np.int8), w, ov, buffers={IN: q.tobytes()}), spec)
  xv = (q.view(np.int8) if sign else q).astype(np.float64)[:, :W]
  if not en: y = q.view(np.int8)[:, :W].astype(np.float64)
  elif typ == 0: y = shr(xv * scale, trunc, rnd) + offset
  else: y = shr((xv + offset) * scale, trunc, rnd)
  x = np.zeros((16, H, W))
  x[0] = np.clip(y, -128, 127)
  acc, _ = ref_conv(x, w, pad=(1, 1), pad_value=-7)
  assert np.array_equal(got, acc)

# ------------------------------------------------------------------------------------------------------------------
# DPU X-stages (BS, BN)
# ------------------------------------------------------------------------------------------------------------------
def f32b(v:float) -> int: return int(np.array([v], np.float32).view(np.uint32)[0])
def f16b(v:float) -> int: return int(np.array([v], np.float16).view(np.uint16)[0])

def test_float_bs_bn_stages():
  """Float datapath: BS = ALU (fp32 operand) then MUL (fp16 operand) then ReLU/ReLUX (fp32 compare); BN = MUL then ALU.
  Here out = min(max(((conv - 0.25) * 2) , 0), 6) then * 3 + 1, all in fp32."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  ov = {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=4, BS_RELUX_EN=1),
        ("DPU", "BS_ALU_CFG"): dict(BS_ALU_OPERAND=f32b(0.25)), ("DPU", "BS_MUL_CFG"): dict(BS_MUL_OPERAND=f16b(2.0)),
        ("DPU", "BS_RELUX_CMP_VALUE"): dict(BS_RELUX_CMP_DAT=f32b(6.0)),
        ("DPU", "BN_CFG"): Set(BN_ALU_ALGO=2, BN_RELU_BYPASS=1),
        ("DPU", "BN_ALU_CFG"): dict(BN_ALU_OPERAND=f32b(1.0)), ("DPU", "BN_MUL_CFG"): dict(BN_MUL_OPERAND=f16b(3.0))}
  rng = np.random.default_rng(11)
  x, w = rand16(rng, 32, 5, 5, scale=2), rand16(rng, 16, 32, 3, 3)
  got = conv_out(run_conv(spec, x, w, ov), spec)
  acc = run_conv(spec, x, w)
  acc = conv_out(acc, spec)
  f = np.float32
  want = (np.minimum(np.maximum((acc - f(0.25)) * f(2), f(0)), f(6)) * f(3) + f(1)).astype(np.float32)
  assert np.array_equal(got, want)
  plain = {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=2, BS_MUL_BYPASS=1)}        # ALU add only, ReLU on
  got2 = conv_out(run_conv(spec, x, w, plain | {("DPU", "BS_ALU_CFG"): dict(BS_ALU_OPERAND=f32b(-0.5))}), spec)
  assert np.array_equal(got2, np.maximum(acc + f(-0.5), f(0)))
  bn_relux = {("DPU", "BN_CFG"): Set(BN_ALU_BYPASS=1, BN_MUL_BYPASS=1, BN_RELUX_EN=1),
              ("DPU", "BN_RELUX_CMP_VALUE"): dict(BN_RELUX_CMP_DAT=f32b(2.0))}
  assert np.array_equal(conv_out(run_conv(spec, x, w, bn_relux), spec), np.minimum(np.maximum(acc, f(0)), f(2)))

def test_integer_bs_bn_stages():
  """Integer datapath (int8 conv -> int32): BS ALU minus (int32 operand), MUL by a signed 16-bit operand with the
  product shifted by BS_MUL_SHIFT_VALUE (>= 0) or DATA_FORMAT.BS_MUL_SHIFT_VALUE_NEG (< 0), rounded half to even and
  saturated to int32, then ReLUX; BN: MUL (shift split by sign too) then ALU add."""
  spec = ConvSpec("int8", 32, 5, 5, 32, 3, 3, (1, 1), (1, 1), out="int32")
  ov = {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=4, BS_RELUX_EN=1),
        ("DPU", "BS_ALU_CFG"): dict(BS_ALU_OPERAND=(-1000) & 0xFFFFFFFF),
        ("DPU", "BS_MUL_CFG"): dict(BS_MUL_OPERAND=(-3) & 0xFFFF, BS_MUL_SHIFT_VALUE=2),
        ("DPU", "DATA_FORMAT"): dict(BS_MUL_SHIFT_VALUE_NEG=4, BN_MUL_SHIFT_VALUE_NEG=1),
        ("DPU", "BS_RELUX_CMP_VALUE"): dict(BS_RELUX_CMP_DAT=30000),
        ("DPU", "BN_CFG"): Set(BN_ALU_ALGO=2, BN_RELU_BYPASS=1),
        ("DPU", "BN_ALU_CFG"): dict(BN_ALU_OPERAND=(-7) & 0xFFFFFFFF),
        ("DPU", "BN_MUL_CFG"): dict(BN_MUL_OPERAND=5, BN_MUL_SHIFT_VALUE=3)}
  rng = np.random.default_rng(12)
  x, w = rand8(rng, 32, 5, 5), rand8(rng, 32, 32, 3, 3)
  got = conv_out(run_conv(spec, x, w, ov), spec).astype(np.int64)
  acc, _ = ref_conv(x, w, pad=(1, 1))
  p = (acc + 1000) * -3
  v = np.clip(np.where(p >= 0, rne(p / 4), rne(p / 16)), -2**31, 2**31 - 1)
  v = np.minimum(np.maximum(v, 0), 30000)
  p = v * 5
  v = np.where(p >= 0, rne(p / 8), rne(p / 2)) - 7
  assert np.array_equal(got, v)

def test_brdma_per_channel_groups():
  """BRDMA_DATA_USE 7: per 8 channels a 64-byte group int32 A[8] (ALU) @0, int16 B[8] (CPEND, with OW_SRC) @32,
  int16 C[8] (MUL) @48 (GN): v = round(((acc + B*S) + A) * C >> s) per channel, then OUT_CVT."""
  spec = ConvSpec("int8", 16, 5, 5, 32, 3, 3, (1, 1), (1, 1), out="int8")
  rng = np.random.default_rng(13)
  x, w = rand8(rng, 16, 5, 5), rand8(rng, 32, 16, 3, 3)
  A = rng.integers(-20000, 20000, 32).astype("<i4")
  B = rng.integers(-300, 300, 32).astype("<i2")
  C = rng.integers(-4000, 4000, 32).astype("<i2")
  blob = b"".join(A[g:g + 8].tobytes() + B[g:g + 8].tobytes() + C[g:g + 8].tobytes() for g in range(0, 32, 8))
  ov = {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=2, BS_ALU_SRC=1, BS_RELU_BYPASS=1),
        ("DPU", "BS_MUL_CFG"): dict(BS_MUL_SHIFT_VALUE=9, BS_MUL_SRC=1), ("DPU", "DATA_FORMAT"): dict(BS_MUL_SHIFT_VALUE_NEG=7),
        ("DPU", "BS_OW_CFG"): dict(OD_BYPASS=0, OW_SRC=1), ("DPU_RDMA", "BRDMA_CFG"): dict(BRDMA_DATA_USE=7),
        ("DPU_RDMA", "BS_BASE_ADDR"): regs.address("DPU_RDMA", "BS_BASE_ADDR", BIAS)}
  got = conv_out(run_conv(spec, x, w, ov, buffers={BIAS: blob}, out_cvt=(3, 6, 2)), spec).astype(np.int64)
  acc, S = ref_conv(x, w, pad=(1, 1))
  p = (acc + B[:, None, None] * S[None] + A[:, None, None]) * C[:, None, None]
  v = np.clip(np.where(p >= 0, rne(p / 2**9), rne(p / 2**7)), -2**31, 2**31 - 1)
  assert np.array_equal(got, np.clip(rne(v * 3 / 64) + 2, -128, 127))

# ------------------------------------------------------------------------------------------------------------------
# EW stage, DPU-only (flying) ops, OUT_CVT
# ------------------------------------------------------------------------------------------------------------------
def run_flying(n:int, prec:str, a:np.ndarray, b:np.ndarray|None, ew=None, overrides=None, operand=True, npu=None):
  prog = override(flying_program(n, prec, SLOTS, ew, operand), overrides)
  dt = P.NP_DTYPE[prec]
  bufs = {IN: np.asarray(a, dt).tobytes(), OUT: n * dt.itemsize}
  if b is not None: bufs[OPND] = np.asarray(b, dt).tobytes()
  r = P.run_program(prog, bufs, [OUT], enable=FLYING_ENABLE, npu=npu, fill=SENTINEL)
  return r, (np.frombuffer(r.out[OUT], dt)[:n] if r.failure is None else None)

EW16 = dict(EW_DATA_MODE=1, EDATA_SIZE=2, EW_RELU_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_SRC=1)
FP16_EW_OPS = {   # AB/GN EW_CFG words (rocket_fp16_ew_ppu.md §3.2)
  "add": (dict(EW16, EW_ALU_ALGO=2), lambda a, b: a + b),
  "minus": (dict(EW16, EW_ALU_ALGO=4), lambda a, b: a - b),
  "max": (dict(EW16, EW_ALU_ALGO=0), np.maximum),
  "min": (dict(EW16, EW_ALU_ALGO=1), np.minimum),
  "mul": (dict(EW16, EW_OP_TYPE=1, EW_OP_CVT_BYPASS=1), lambda a, b: a * b),
}

@pytest.mark.parametrize("op", list(FP16_EW_OPS))
def test_flying_fp16_ew_ops(op):
  """DPU-only fp16 ops: MRDMA (fp16 -> fp32) main, ERDMA fp16 operand per pixel, fp32 ALU/MUL, FP32TOFP16 output."""
  cfg, fn = FP16_EW_OPS[op]
  rng = np.random.default_rng(14)
  a, b = rand16(rng, 256, scale=8), rand16(rng, 256, scale=8)
  r, got = run_flying(256, "fp16", a, b, cfg)
  assert r.failure is None, r.failure
  assert np.array_equal(got, fn(a.astype(np.float32), b.astype(np.float32)).astype(np.float16))

def test_flying_ew_relu_relux():
  rng = np.random.default_rng(15)
  a, b = rand16(rng, 64, scale=8), rand16(rng, 64, scale=8)
  _, got = run_flying(64, "fp16", a, b, dict(EW16, EW_ALU_ALGO=2, EW_RELU_BYPASS=0, EW_RELUX_EN=1),
                      {("DPU", "EW_RELUX_CMP_VALUE"): dict(EW_RELUX_CMP_DAT=f32b(3.5))})
  s = a.astype(np.float32) + b.astype(np.float32)
  assert np.array_equal(got, np.minimum(np.maximum(s, 0), 3.5).astype(np.float16))
  _, got = run_flying(64, "fp16", a, b, dict(EW16, EW_ALU_ALGO=2, EW_RELU_BYPASS=0))
  assert np.array_equal(got, np.maximum(s, 0).astype(np.float16))

@pytest.mark.parametrize("prec,op", [("int8", "add"), ("int8", "minus"), ("int16", "max"), ("int16", "mul"),
                                     ("int32", "min"), ("int32", "mul")])
def test_flying_integer_bundle(prec, op):
  """Integer EW with the whole precision bundle (GN sdp-stage-precision.md): exact, ADD/MINUS/MUL saturate to the
  type; an int32 MUL reads its operand as signed int16."""
  info = np.iinfo(P.NP_DTYPE[prec])
  size = {"int8": 1, "int16": 2, "int32": 3}[prec]
  cfg = dict(EW_DATA_MODE=1, EDATA_SIZE=size, EW_RELU_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_SRC=1)
  cfg |= dict(EW_OP_TYPE=1, EW_OP_CVT_BYPASS=1) if op == "mul" else dict(EW_ALU_ALGO={"add": 2, "minus": 4, "max": 0, "min": 1}[op])
  n = 64
  rng = np.random.default_rng(16)
  a = rng.integers(info.min, info.max, n, endpoint=True)
  b = rng.integers(info.min, info.max, n, endpoint=True)
  r, got = run_flying(n, prec, a, b, cfg)
  assert r.failure is None, r.failure
  bb = ((b & 0xFFFF) ^ 0x8000) - 0x8000 if (prec == "int32" and op == "mul") else b
  want = {"add": a + b, "minus": a - b, "max": np.maximum(a, b), "min": np.minimum(a, b), "mul": a * bb}[op]
  assert np.array_equal(got.astype(np.int64), np.clip(want, info.min, info.max))

def test_out_cvt_float_affine_and_fp16_overflow():
  """Float OUT_CVT with CVT_TYPE 1: (v + OFFSET) * 2^-MINUS_EXP * SCALE in fp32 (GN LUT decode); FP32TOFP16 rounds to
  nearest and overflows to inf."""
  a = np.array([0, 1, -2.5, 100, 60000, -60000, 3.25, 7] * 2, np.float16)
  ov = {("DPU", "OUT_CVT_SHIFT"): dict(CVT_TYPE=1, MINUS_EXP=2), ("DPU", "OUT_CVT_OFFSET"): dict(OUT_CVT_OFFSET=3),
        ("DPU", "OUT_CVT_SCALE"): dict(OUT_CVT_SCALE=5)}
  r, got = run_flying(16, "fp16", a, None, overrides=ov, operand=False)
  assert r.failure is None, r.failure
  f = np.float32
  with np.errstate(over="ignore"): want = ((a.astype(f) + f(3)) * f(0.25) * f(5)).astype(np.float16)
  assert np.array_equal(got, want)
  assert np.isinf(got[4]) and np.isinf(got[5])

def ew_fused_overrides(prec:str, plane:int, cvt=None):
  """The conv-fed EW geometry of Mesa's add_tensor / GN's K-accumulation: COMB_USE 5, MRDMA at the operand, ERDMA one
  surface further, EW_SURF_STRIDE = SURF_NOTCH = EW_SURF_NOTCH = one surface."""
  int8 = prec == "int8"
  cfg = dict(EW_DATA_MODE=1, EDATA_SIZE=1 if int8 else 2, EW_ALU_ALGO=2, EW_RELU_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_SRC=1)
  if cvt: cfg |= dict(EW_CVT_TYPE=cvt[3], EW_CVT_ROUND=cvt[4])
  p = PREC[prec]
  return {("DPU", "EW_CFG"): Set(cfg),
          ("DPU", "EW_CVT_OFFSET_VALUE"): dict(EW_OP_CVT_OFFSET=cvt[0] if cvt else 0),
          ("DPU", "EW_CVT_SCALE_VALUE"): Set(EW_OP_CVT_SCALE=cvt[1] if cvt else 1, EW_OP_CVT_SHIFT=cvt[2] if cvt else 0),
          ("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=1 if int8 else 2),
          ("DPU_RDMA", "FEATURE_MODE_CFG"): Set(IN_PRECISION=p, BURST_LEN=15, COMB_USE=5, PROC_PRECISION=p),
          ("DPU_RDMA", "SRC_BASE_ADDR"): regs.address("DPU_RDMA", "SRC_BASE_ADDR", OPND),
          ("DPU_RDMA", "EW_BASE_ADDR"): regs.address("DPU_RDMA", "EW_BASE_ADDR", OPND, plane),
          ("DPU_RDMA", "EW_SURF_STRIDE"): dict(EW_SURF_STRIDE=plane), ("DPU_RDMA", "SURF_NOTCH"): dict(SURF_NOTCH_ADDR=plane),
          ("DPU_RDMA", "EW_SURF_NOTCH"): dict(EW_SURF_NOTCH=plane)}

def test_conv_fed_ew_add_fp16():
  """GN K-accumulation: conv + addend (fp16 cube in the output layout, 6 surfaces shared by MRDMA/ERDMA)."""
  spec = ConvSpec("fp16", 32, 6, 5, 48, 3, 3, (1, 1), (1, 1), out="fp16")
  rng = np.random.default_rng(17)
  x, w, e = rand16(rng, 32, 6, 5), rand16(rng, 48, 32, 3, 3), rand16(rng, 48, 6, 5, scale=4)
  plane = spec.OH * spec.OW * 16
  got = conv_out(run_conv(spec, x, w, ew_fused_overrides("fp16", plane), buffers={OPND: P.pack_cube(e, "fp16")}), spec)
  spec32 = ConvSpec("fp16", 32, 6, 5, 48, 3, 3, (1, 1), (1, 1), out="fp32")
  base = conv_out(run_conv(spec32, x, w), spec32)
  assert np.array_equal(got, (base + e.astype(np.float32)).astype(np.float16))

@pytest.mark.parametrize("cvt", [(-5, 20000, 14, 1, 0), (9, 3001, 3, 0, 1)])
def test_conv_fed_ew_add_int8(cvt):
  """Mesa's fused ADD: the int8 operand goes through the EW converter, add first ((e + OFFSET)*SCALE >> SHIFT) or
  multiply first ((e*SCALE >> SHIFT) + OFFSET) with the EW_CVT_ROUND tie rule, then is added to the accumulator."""
  off, sc, sh, typ, rnd = cvt
  spec = ConvSpec("int8", 16, 5, 5, 32, 3, 3, (1, 1), (1, 1), out="int8")
  rng = np.random.default_rng(18)
  x, w, e = rand8(rng, 16, 5, 5), rand8(rng, 32, 16, 3, 3), rand8(rng, 32, 5, 5)
  plane = spec.OH * spec.OW * 16
  got = conv_out(run_conv(spec, x, w, ew_fused_overrides("int8", plane, cvt), buffers={OPND: P.pack_cube(e, "int8")},
                          out_cvt=(3, 5, -4)), spec).astype(np.int64)
  acc, _ = ref_conv(x, w, pad=(1, 1))
  ev = e.astype(np.float64)
  e2 = shr((ev + off) * sc, sh, rnd) if typ else shr(ev * sc, sh, rnd) + off
  assert np.array_equal(got, np.clip(shr((acc + e2) * 3, 5, 0) - 4, -128, 127))

# ------------------------------------------------------------------------------------------------------------------
# failures: IOMMU faults, hangs, refused configurations
# ------------------------------------------------------------------------------------------------------------------
NOWHERE = 9                 # a buffer slot that is given an IOVA no BO maps
UNMAPPED = 0x4000_0000

def build(kind:str):
  """(programs, buffers, enable) of a small known-good task of each kind."""
  rng = np.random.default_rng(20)
  if kind in ("conv16", "dw16", "conv16h"):
    dw = kind == "dw16"
    spec = ConvSpec("fp16", 32, 5, 5, 32 if dw else 16, 3, 3, (1, 1), (1, 1), depthwise=dw, out="fp16" if dw else "fp32")
    x, w = rand16(rng, 32, 5, 5), rand16(rng, *((32, 3, 3) if dw else (16, 32, 3, 3)))
    return conv_programs(spec, SLOTS), conv_buffers(spec, x, w), regs.MESA_CONV_ENABLE
  if kind in ("conv8", "dw8"):
    dw = kind == "dw8"
    spec = ConvSpec("int8", 64 if dw else 16, 5, 5, 32, 3, 3, (1, 1), (1, 1), depthwise=dw, out="int8")
    x = rand8(rng, spec.C, 5, 5)
    w = rand8(rng, *((spec.C, 3, 3) if dw else (32, 16, 3, 3)))
    bias = np.zeros(spec.OC, "<i4").tobytes()
    return conv_programs(spec, SLOTS, bias=True, ow_op=3), conv_buffers(spec, x, w, bias), regs.MESA_CONV_ENABLE
  if kind in ("fly16", "fly8"):
    prec = "fp16" if kind == "fly16" else "int8"
    dt = P.NP_DTYPE[prec]
    return ([flying_program(64, prec, SLOTS)], {IN: np.ones(64, dt).tobytes(), OPND: np.ones(64, dt).tobytes(),
            OUT: 64 * dt.itemsize}, FLYING_ENABLE)
  raise ValueError(kind)

def run_kind(kind:str, overrides=None, enable=None, buffers=None, extra_iovas=None, npu=None):
  progs, bufs, en = build(kind)
  progs = [override(p, overrides) for p in progs]
  en = enable if enable is not None else en
  if en & ~regs.OP_ENABLE_KNOWN:         # our encoder refuses reserved op-enable bits: patch the assembled list
    return P.run_program(progs, bufs | (buffers or {}), [OUT], enable=en & regs.OP_ENABLE_KNOWN, npu=npu,
                         extra_iovas=extra_iovas, fill=SENTINEL, raw_enable=en)
  return P.run_program(progs, bufs | (buffers or {}), [OUT], enable=en, npu=npu, extra_iovas=extra_iovas, fill=SENTINEL)

def expect(r, kind:str, text:str):
  reason = failure(r)
  prefix = {"hang": "hang:", "iommu": "IOMMU fault:", "unsupported": "unsupported register configuration:"}[kind]
  assert reason.startswith(prefix), reason
  assert text in reason, reason
  assert set(r.out[OUT]) == {SENTINEL}, "a failed job wrote its output"

FAULTS = [  # (kind, register whose address goes nowhere)
  ("conv16", ("CNA", "FEATURE_DATA_ADDR")), ("conv16", ("CNA", "DCOMP_ADDR0")), ("conv16", ("DPU", "DST_BASE_ADDR")),
  ("conv8", ("DPU_RDMA", "BS_BASE_ADDR")), ("fly16", ("DPU_RDMA", "SRC_BASE_ADDR")), ("fly16", ("DPU_RDMA", "EW_BASE_ADDR")),
]

@pytest.mark.parametrize("kind,reg", FAULTS, ids=lambda v: v if isinstance(v, str) else ".".join(v))
def test_dma_outside_the_bos_is_an_iommu_fault(kind, reg):
  r = run_kind(kind, {reg: regs.address(*reg, NOWHERE)}, extra_iovas={NOWHERE: UNMAPPED})
  expect(r, "iommu", f"{UNMAPPED:#x}")

def test_output_partly_outside_its_bo_faults_and_writes_nothing():
  """The output BO is the last mapping; the task's output starts 800 bytes before its end: the WDMA range is checked
  as a whole, so not even the part inside the BO is written."""
  progs, bufs, en = build("conv16")
  with P.Session() as s:
    s.buffer(-1, 4096)                                       # a hole at IOVA 0 for the regcmd BO
    for slot in (IN, WT): s.buffer(slot, bufs[slot])
    s.buffer(OUT, 4096, fill=SENTINEL)
    s.drv.close_bo(s.bos.pop(-1))
    progs = [override(p, {("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", OUT, 4096 - 800)}) for p in progs]
    r = s.run([regs.Task(entries(p), en) for p in progs], [OUT])
  expect(r, "iommu", "WDMA write")

def test_reads_spanning_adjacent_bos_do_not_fault():
  """The IOMMU maps BOs back to back: a cube that runs from one BO into the next is read like the hardware would."""
  progs, bufs, en = build("conv16")
  data = bufs[IN]
  half = 4096
  progs = [override(p, {("CNA", "FEATURE_DATA_ADDR"): regs.address("CNA", "FEATURE_DATA_ADDR", 5, half - 1024)}) for p in progs]
  bufs = {k: v for k, v in bufs.items() if k != IN} | {5: b"\0" * (half - 1024) + data[:1024], 6: data[1024:]}
  ok = P.run_program(progs, bufs, [OUT], enable=en)
  ref_ = run_kind("conv16")
  assert ok.failure is None and ok.out[OUT] == ref_.out[OUT]

HANGS = [  # (kind, overrides, enable, text)
  ("conv16", {("DPU_RDMA", "FEATURE_MODE_CFG"): Set(BURST_LEN=15)}, None, "MRDMA trap"),
  ("conv16", {("DPU", "EW_CFG"): Set(EW16, EW_ALU_ALGO=2)}, None, "EW operand armed"),
  ("conv16", {("DPU", "EW_CFG"): Set(EW16, EW_ALU_ALGO=2)}, 0x0D, "EW operand armed"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(COMB_USE=1)}, None, "never completes"),
  ("conv8", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=1)}, None, "int16"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=7)}, None, "tf32"),
  ("fly16", {("DPU", "EW_CFG"): Set(EW16, EW_OP_TYPE=1)}, None, "converter live"),
  ("conv8", {("DPU", "BN_CFG"): Set(BN_ALU_ALGO=2, BN_ALU_SRC=1, BN_RELU_BYPASS=1), ("DPU", "BN_MUL_CFG"): dict(BN_MUL_SRC=1),
             ("DPU_RDMA", "NRDMA_CFG"): dict(NRDMA_DATA_USE=7)}, None, "NRDMA"),
  ("conv16", None, 0x05, "does not start the DPU"),
  ("conv16", None, 0x19, "without CORE"),
  ("conv16", None, 0x18, "without FLYING_MODE"),
]

@pytest.mark.parametrize("kind,ov,enable,text", HANGS, ids=lambda v: v if isinstance(v, str) else None)
def test_hangs(kind, ov, enable, text):
  expect(run_kind(kind, ov, enable), "hang", text)

def _w(bytes_:int, kernels:int) -> dict:
  return {("CNA", "WEIGHT_SIZE0"): dict(WEIGHT_BYTES=bytes_ * kernels), ("CNA", "WEIGHT_SIZE2"): dict(WEIGHT_KERNELS=kernels)}

EWF = dict(EW_DATA_MODE=1, EDATA_SIZE=2, EW_RELU_BYPASS=1, EW_LUT_BYPASS=1, EW_OP_SRC=1, EW_ALU_ALGO=2)
REFUSED = [  # (kind, overrides, enable, text)
  ("conv16", {("CNA", "CONV_CON1"): dict(DECONV=1)}, None, "deconvolution"),
  ("conv16", {("CNA", "CONV_CON3"): dict(NN_MODE=1)}, None, "co-work"),
  ("conv16", {("CNA", "FC_CON0"): dict(FC_SKIP_EN=1)}, None, "FC skip"),
  ("conv16", {("CNA", "FC_CON1"): dict(DATA_OFFSET=16)}, None, "FC data offset"),
  ("conv16", {("CNA", "FC_CON2"): dict(WEIGHT_OFFSET=16)}, None, "FC weight offset"),
  ("conv16", {("CNA", "DATA_SIZE3"): dict(SURF_MODE=1)}, None, "SURF_MODE"),
  ("conv16", {("CNA", "DCOMP_CTRL"): dict(DECOMP_CONTROL=1)}, None, "decompression"),
  ("conv16", {("CNA", "CBUF_CON0"): dict(DATA_REUSE=1)}, None, "feature-data reuse"),
  ("conv16", {("CNA", "CBUF_CON0"): dict(FC_DATA_BANK=1)}, None, "FC_DATA_BANK"),
  ("conv16", {("CORE", "UNDOC_3030"): dict(VALUE=1)}, None, "0x3030"),
  ("conv16", {("CNA", "CONV_CON1"): dict(IN_PRECISION=0)}, None, "differ"),
  ("conv16", {("CORE", "MISC_CFG"): dict(PROC_PRECISION=0)}, None, "differ"),
  ("conv16", {("CNA", "CONV_CON1"): dict(IN_PRECISION=6, PROC_PRECISION=6), ("CORE", "MISC_CFG"): dict(PROC_PRECISION=6)}, None, "int4"),
  ("conv16", {("CNA", "CONV_CON1"): dict(CONV_MODE=1)}, None, "CONV_MODE 1"),
  ("conv16", {("CORE", "MISC_CFG"): dict(DW_EN=1)}, None, "DW_EN 1"),
  ("conv16", {("CNA", "DATA_SIZE1"): dict(DATAIN_CHANNEL_REAL=40)}, None, "DATAIN_CHANNEL_REAL"),
  ("conv16", {("CNA", "CONV_CON1"): dict(ARGB_IN=10, NONALIGN_DMA=1, GROUP_LINE_OFF=1)}, None, "ARGB_IN 10"),
  ("conv16", {("CNA", "CONV_CON1"): dict(ARGB_IN=8)}, None, "without NONALIGN_DMA|GROUP_LINE_OFF"),
  ("conv16", {("CNA", "CONV_CON1"): dict(ARGB_IN=8, NONALIGN_DMA=1, GROUP_LINE_OFF=1)}, None, "pixel path at fp16"),
  ("conv16", {("CNA", "CONV_CON1"): dict(GROUP_LINE_OFF=1)}, None, "without the pixel path"),
  ("conv16", {("CNA", "CVT_CON0"): dict(CVT_BYPASS=0)}, None, "converter on packed"),
  ("conv16", {("CNA", "DMA_CON1"): dict(LINE_STRIDE=21)}, None, "4-row blocks"),
  ("conv16", {("CNA", "DATA_SIZE0"): dict(DATAIN_HEIGHT=3)}, None, "under 4 rows"),
  ("conv16", {("CNA", "CBUF_CON1"): dict(DATA_ENTRIES=3)}, None, "DATA_ENTRIES"),
  ("conv16", {("CNA", "CBUF_CON0"): dict(DATA_BANK=10, WEIGHT_BANK=3)}, None, "12 CBUF banks"),
  ("conv16", {("CNA", "CBUF_CON0"): dict(DATA_BANK=0)}, None, "DATA_BANK is 0"),
  ("conv16", {("CNA", "DATA_SIZE2"): dict(DATAOUT_WIDTH=4)}, None, "DATAOUT_WIDTH"),
  ("conv16", {("CNA", "DATA_SIZE3"): dict(DATAOUT_ATOMICS=3)}, None, "DATAOUT_ATOMICS"),
  ("conv16", {("CNA", "WEIGHT_SIZE1"): dict(WEIGHT_BYTES_PER_KERNEL=64)}, None, "WEIGHT_BYTES_PER_KERNEL"),
  ("conv16", {("CNA", "WEIGHT_SIZE0"): dict(WEIGHT_BYTES=64)}, None, "WEIGHT_BYTES 64"),
  ("conv16", _w(9 * 32 * 2, 40), None, "WEIGHT_KERNELS 40"),
  ("conv16", {("CNA", "WEIGHT_SIZE2"): dict(WEIGHT_WIDTH=0)}, None, "empty kernel"),
  ("dw16", _w(9 * 32 * 2, 2), None, "WEIGHT_KERNELS 2"),
  ("conv16", {("CNA", "CONV_CON3"): dict(CONV_X_STRIDE=0)}, None, "stride"),
  ("conv16", {("CORE", "CLIP_TRUNCATE"): dict(CLIP_TRUNCATE=1)}, None, "CLIP_TRUNCATE 1 on the fp16"),
  ("conv16", {("DPU", "FEATURE_MODE_CFG"): dict(TP_EN=1)}, None, "transpose"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(MC_SURF_OUT=1)}, None, "MC_SURF_OUT"),
  ("conv16", {("DPU", "DATA_CUBE_HEIGHT"): dict(MINMAX_CTL=1)}, None, "MINMAX_CTL"),
  ("conv16", {("DPU", "DATA_CUBE_NOTCH_ADDR"): dict(NOTCH_ADDR_0=1)}, None, "NOTCH_ADDR_0"),
  ("conv16", {("DPU", "DATA_CUBE_NOTCH_ADDR"): dict(NOTCH_ADDR_1=1)}, None, "NOTCH_ADDR_1"),
  ("conv16", {("DPU", "BS_OW_CFG"): dict(TP_ORG_EN=1)}, None, "TP_ORG_EN"),
  ("conv16", {("DPU", "WDMA_SIZE_0"): dict(TP_PRECISION=1)}, None, "TP_PRECISION"),
  ("conv16", {("DPU", "UNDOC_40C4"): dict(VALUE=1)}, None, "0x40C4"),
  ("conv16", {("DPU", "FEATURE_MODE_CFG"): dict(OUTPUT_MODE=3)}, None, "OUTPUT_MODE"),
  ("conv16", {("DPU", "BS_OW_CFG"): dict(SIZE_E_1=2)}, None, "SIZE_E_0/1/2"),
  ("conv16", {("DPU", "BS_OW_CFG"): dict(SIZE_E_0=1, SIZE_E_1=1, SIZE_E_2=1)}, None, "SIZE_E 1 with 16 fp32"),
  ("conv16", {("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=7)}, None, "CHANNEL_WDMA"),
  ("conv16", {("DPU", "WDMA_SIZE_1"): dict(WIDTH_WDMA=3)}, None, "WDMA_SIZE_1"),
  ("conv16", {("DPU", "WDMA_SIZE_1"): dict(HEIGHT_WDMA=3)}, None, "WDMA_SIZE_1"),
  ("conv16", {("DPU", "DATA_CUBE_WIDTH"): dict(WIDTH=3), ("DPU", "WDMA_SIZE_1"): dict(WIDTH_WDMA=3),
              ("DPU_RDMA", "DATA_CUBE_WIDTH"): dict(WIDTH=3)}, None, "differs from the CORE output"),
  ("dw16", {("DPU", "FEATURE_MODE_CFG"): dict(CONV_MODE=0)}, None, "CONV_MODE"),
  ("dw16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(CONV_MODE=0)}, None, "CONV_MODE"),
  ("conv16", {("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=7)}, None, "DPU_RDMA cube"),
  ("conv16", {("DPU_RDMA", "DATA_CUBE_HEIGHT"): dict(HEIGHT=1)}, None, "DPU_RDMA cube"),
  ("conv16", {("DPU", "FEATURE_MODE_CFG"): dict(FLYING_MODE=1)}, None, "conv result would go nowhere"),
  ("conv16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(FLYING_MODE=1)}, None, "DPU_RDMA FLYING_MODE with a convolution"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(IN_PRECISION=0)}, None, "DPU in/proc precision"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(PROC_PRECISION=5)}, None, "DPU in/proc precision"),
  ("conv8", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=2)}, None, "fp16 output"),
  ("conv8", {("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=1)}, None, "FP32TOFP16_EN on the integer"),
  ("conv8", {("CORE", "MISC_CFG"): dict(QD_EN=0)}, None, "QD_EN"),
  ("conv8", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=4), ("DPU", "BS_OW_CFG"): dict(SIZE_E_0=7, SIZE_E_1=7, SIZE_E_2=7),
             ("DPU", "SURFACE_ADD"): dict(SURF_ADD=25 * 16 * 8)}, None, "CPEND"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=2)}, None, "fp16 output without FP32TOFP16_EN"),
  ("conv16", {("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=1)}, None, "fp32 output with FP32TOFP16_EN"),
  ("conv16", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=3)}, None, "bf16 output"),
  ("conv16", {("DPU", "OUT_CVT_SHIFT"): dict(OUT_CVT_SHIFT=1)}, None, "OUT_CVT_SHIFT 1 on the float"),
  ("conv16", {("DPU", "OUT_CVT_SCALE"): dict(OUT_CVT_SCALE=2)}, None, "CVT_TYPE 0 and a non-identity"),
  ("conv16", {("DPU", "OUT_CVT_OFFSET"): dict(OUT_CVT_OFFSET=1)}, None, "CVT_TYPE 0 and a non-identity"),
  ("conv16", {("DPU", "OUT_CVT_SHIFT"): dict(MINUS_EXP=1)}, None, "CVT_TYPE 0 and a non-identity"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_MUL_PRELU=1, BS_ALU_BYPASS=1)}, None, "BS_MUL_PRELU"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_MUL_PRELU=1, BN_ALU_BYPASS=1)}, None, "BN_MUL_PRELU"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_MUL_BYPASS=1), ("DPU", "BS_MUL_CFG"): dict(BS_TRUNCATE_SRC=1)}, None, "BS_TRUNCATE_SRC"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_MUL_BYPASS=1), ("DPU", "BN_MUL_CFG"): dict(BN_TRUNCATE_SRC=1)}, None, "BN_TRUNCATE_SRC"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=0, BS_MUL_BYPASS=1)}, None, "BS_ALU_ALGO 0"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_ALU_ALGO=1, BN_MUL_BYPASS=1)}, None, "BN_ALU_ALGO 1"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_RELUX_EN=1, BS_RELU_BYPASS=1, BS_MUL_BYPASS=1, BS_ALU_BYPASS=1)}, None, "BS_RELUX_EN"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_RELUX_EN=1, BN_RELU_BYPASS=1, BN_MUL_BYPASS=1, BN_ALU_BYPASS=1)}, None, "BN_RELUX_EN"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_ALU_BYPASS=1), ("DPU", "BS_MUL_CFG"): dict(BS_MUL_SHIFT_VALUE=1)}, None, "BS MUL shift"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_ALU_BYPASS=1), ("DPU", "DATA_FORMAT"): dict(BN_MUL_SHIFT_VALUE_NEG=1)}, None, "BN MUL shift"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_ALU_ALGO=2, BS_ALU_SRC=1, BS_MUL_BYPASS=1)}, None, "BS ALU operand from memory in float"),
  ("conv16", {("DPU", "BS_CFG"): Set(BS_ALU_BYPASS=1), ("DPU", "BS_MUL_CFG"): dict(BS_MUL_SRC=1)}, None, "BS MUL operand from memory"),
  ("conv16", {("DPU_RDMA", "BRDMA_CFG"): dict(BRDMA_DATA_USE=1)}, None, "BRDMA in float"),
  ("conv8", {("DPU_RDMA", "BRDMA_CFG"): dict(BRDMA_DATA_USE=0)}, None, "does not fetch"),
  ("conv8", None, 0x0D, "DPU_RDMA not started"),
  ("conv8", {("DPU_RDMA", "BRDMA_CFG"): dict(BRDMA_DATA_USE=9)}, None, "TRT"),
  ("conv8", {("DPU", "BS_CFG"): Set(BS_BYPASS=1)}, None, "BRDMA_DATA_USE 1 with no BS operand"),
  ("conv8", {("DPU", "BS_OW_CFG"): dict(OW_SRC=1)}, None, "CPEND operand from memory but BRDMA_DATA_USE 1"),
  ("conv8", {("DPU", "BN_CFG"): Set(BN_ALU_ALGO=2, BN_ALU_SRC=1, BN_MUL_BYPASS=1), ("DPU_RDMA", "NRDMA_CFG"): dict(NRDMA_DATA_USE=1)},
   None, "not established"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_ALU_ALGO=2, BN_ALU_SRC=1, BN_MUL_BYPASS=1)}, None, "BN ALU operand from memory in float"),
  ("conv16", {("DPU", "BN_CFG"): Set(BN_ALU_BYPASS=1), ("DPU", "BN_MUL_CFG"): dict(BN_MUL_SRC=1)}, None, "BN MUL operand from memory"),
  ("conv16", {("DPU_RDMA", "NRDMA_CFG"): dict(NRDMA_DATA_USE=1)}, None, "NRDMA_DATA_USE 1"),
  ("conv16", {("DPU", "EW_CFG"): Set(EW_OP_BYPASS=1, EW_RELU_BYPASS=1, EW_OP_CVT_BYPASS=1)}, None, "LUT"),
  ("conv16", {("DPU", "EW_CFG"): Set(EW_RELUX_EN=1, EW_RELU_BYPASS=1, EW_OP_BYPASS=1, EW_LUT_BYPASS=1)}, None, "EW_RELUX_EN"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_OP_SRC=0)}, None, "EW_OP_VALUE"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_MUL_PRELU=1)}, None, "EW_MUL_PRELU"),
  ("fly16", {("DPU", "EW_CVT_SCALE_VALUE"): dict(EW_TRUNCATE=1)}, None, "EW_TRUNCATE"),
  ("fly16", {("DPU", "DATA_FORMAT"): dict(EW_TRUNCATE_NEG=1)}, None, "EW_TRUNCATE"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_DATA_MODE=2)}, None, "EW_DATA_MODE 2 differs"),
  ("fly16", {("DPU", "EW_CFG"): dict(EDATA_SIZE=3)}, None, "EDATA_SIZE 3 differs"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_DATA_MODE=0), ("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=0, ERDMA_DATA_SIZE=2)}, None,
   "ERDMA_DATA_MODE 0"),
  ("fly16", {("DPU", "EW_CFG"): dict(EDATA_SIZE=0), ("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=1)}, None, "4-bit"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_ALU_ALGO=5)}, None, "EW_ALU_ALGO 5"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_OP_CVT_BYPASS=1)}, None, "passes the main operand"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_ALU_ALGO=3, EW_OP_CVT_BYPASS=1)}, None, "EW DIV"),
  ("fly16", {("DPU", "EW_CVT_OFFSET_VALUE"): dict(EW_OP_CVT_OFFSET=1)}, None, "non-identity EW input converter"),
  ("fly16", {("DPU", "EW_CFG"): dict(EW_CVT_TYPE=1), ("DPU", "EW_CVT_SCALE_VALUE"): dict(EW_OP_CVT_SHIFT=1)}, None, "non-identity"),
  ("fly8", {("DPU", "EW_CFG"): dict(EW_ALU_ALGO=3)}, None, "integer EW DIV"),
  ("fly8", {("DPU", "EW_CFG"): dict(EDATA_SIZE=2), ("DPU_RDMA", "ERDMA_CFG"): dict(ERDMA_DATA_SIZE=2)}, None, "element sizes included"),
  ("fly8", {("DPU", "EW_CVT_SCALE_VALUE"): dict(EW_OP_CVT_SCALE=0x8000)}, None, "EW_OP_CVT_SCALE 0x8000"),
  ("conv16", {("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=2)}, None, "no EW operand consumer"),
  ("fly16", {("DPU_RDMA", "ERDMA_CFG"): dict(ERDMA_SURF_MODE=1)}, None, "ERDMA_SURF_MODE"),
  ("fly16", {("DPU_RDMA", "ERDMA_CFG"): dict(ERDMA_NONALIGN=1)}, None, "ERDMA_NONALIGN"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(COMB_USE=2)}, None, "flying EW with COMB_USE 2"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(FLYING_MODE=0)}, None, "without DPU_RDMA FLYING_MODE"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(MRDMA_DISABLE=1)}, None, "MRDMA disabled"),
  ("fly16", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=5), ("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=0)}, None, "only fp16 output"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(MRDMA_FP16TOFP32_EN=0)}, None, "FDIV"),
  ("fly16", {("DPU", "DATA_FORMAT"): dict(PROC_PRECISION=5)}, None, "flying fp16 input with DPU in/proc"),
  ("fly8", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(PROC_PRECISION=4)}, None, "whole precision bundle"),
  ("fly8", {("DPU", "OUT_CVT_SCALE"): dict(FP32TOFP16_EN=1)}, None, "FP32TOFP16_EN on the integer"),
  ("fly16", {("DPU_RDMA", "FEATURE_MODE_CFG"): dict(IN_PRECISION=3)}, None, "flying DPU input precision bf16"),
  ("fly16", {("DPU", "DATA_CUBE_CHANNEL"): dict(ORIG_CHANNEL=0)}, None, "ORIG_CHANNEL"),
  ("fly16", {("DPU", "FEATURE_MODE_CFG"): dict(CONV_MODE=3)}, None, "depthwise CONV_MODE"),
  ("fly16", {("DPU", "DATA_CUBE_CHANNEL"): Set(ORIG_CHANNEL=15, CHANNEL=15), ("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=15),
             ("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=15)}, None, "only one full atom"),
  ("fly8", {("DPU", "BS_OW_CFG"): dict(OD_BYPASS=0)}, None, "no window sum"),
  ("fly16", None, 0x08, "without DPU_RDMA"),
  ("conv16", {("CORE", "DATAOUT_SIZE_1"): dict(DATAOUT_CHANNEL=23), ("DPU", "DATA_CUBE_CHANNEL"): Set(ORIG_CHANNEL=23, CHANNEL=23),
              ("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=23), ("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=23)}, None, "not whole 16"),
  ("conv16", {("DPU", "SURFACE_ADD"): dict(SURF_ADD=25 * 16 * 2), ("CORE", "DATAOUT_SIZE_1"): dict(DATAOUT_CHANNEL=31),
              ("DPU", "DATA_CUBE_CHANNEL"): Set(ORIG_CHANNEL=31, CHANNEL=31), ("DPU", "WDMA_SIZE_0"): dict(CHANNEL_WDMA=31),
              ("DPU_RDMA", "DATA_CUBE_CHANNEL"): dict(CHANNEL=31)}, None, "SURFACE_ADD"),
  ("conv16", {("DPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=16), ("DPU", "SURFACE_ADD"): dict(SURF_ADD=64)}, None, "surfaces overlap"),
  ("dw8", {("DPU", "DATA_FORMAT"): dict(OUT_PRECISION=4), ("DPU", "BS_OW_CFG"): dict(OD_BYPASS=1)}, None, "more than SIZE_E"),
  ("conv8", {("DPU", "EW_CFG"): Set(EWF, EDATA_SIZE=2), ("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=2),
             ("DPU_RDMA", "FEATURE_MODE_CFG"): Set(BURST_LEN=15, COMB_USE=5)}, None, "16-bit integer EW operand on a conv-fed"),
  ("fly16", {("DPU", "DATA_CUBE_WIDTH"): dict(WIDTH=8190), ("DPU", "WDMA_SIZE_1"): dict(WIDTH_WDMA=8190),
             ("DPU_RDMA", "DATA_CUBE_WIDTH"): dict(WIDTH=8190)}, None, "exactly 8191"),
  ("conv16", None, 0x7D, "PPU"),
  ("conv16", None, 0x1F, "reserved"),
  ("conv16", {("CNA", "CBUF_CON0"): dict(WEIGHT_REUSE=1)}, None, "WEIGHT_REUSE"),
  ("conv16", {("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", IN)}, None, "in place"),
]

@pytest.mark.parametrize("kind,ov,enable,text", REFUSED, ids=lambda v: v if isinstance(v, str) else None)
def test_refused_configurations(kind, ov, enable, text):
  """Register combinations whose hardware result is unknown, or known to be wrong (and not reproduced): the job fails
  with an explicit reason and writes nothing."""
  expect(run_kind(kind, ov, enable), "unsupported", text)

def test_int8_width1_exact_cbuf_fit_is_refused():
  """GN: an int8 matmul-shaped input (width 1) that fills its data banks to >= 97.6 % computes the last rows wrong."""
  M, K = 512, 64                                      # 512 rows x 4 atoms x 16 bytes = 32768 bytes: one bank, 100 %
  spec = ConvSpec("int8", K, M, 1, 32, 1, 1, out="int32")
  rng = np.random.default_rng(26)
  x, w = rand8(rng, K, M, 1), rand8(rng, 32, K, 1, 1)
  r = run_conv(spec, x, w, {("CNA", "CBUF_CON0"): dict(DATA_BANK=1, WEIGHT_BANK=11)})   # exact fit
  expect(r, "unsupported", "the last rows wrong")
  ok = run_conv(spec, x, w)   # ops/conv.py gives an int8 input its slack bank
  assert np.array_equal(conv_out(ok, spec)[:, :, 0], ref_conv(x, w)[0][:, :, 0])

def test_conv_fed_ew_geometry_outside_the_validated_one_is_refused():
  spec = ConvSpec("fp16", 32, 6, 5, 16, 3, 3, (1, 1), (1, 1), out="fp16")
  plane = spec.OH * spec.OW * 16
  rng = np.random.default_rng(21)
  x, w, e = rand16(rng, 32, 6, 5), rand16(rng, 16, 32, 3, 3), rand16(rng, 16, 6, 5)
  good = ew_fused_overrides("fp16", plane)
  fmc = dict(IN_PRECISION=2, BURST_LEN=15, PROC_PRECISION=2)
  for change, text in [({("DPU_RDMA", "FEATURE_MODE_CFG"): Set(fmc, COMB_USE=4)}, "only 5"),
                       ({("DPU_RDMA", "FEATURE_MODE_CFG"): Set(fmc, COMB_USE=5, MRDMA_DISABLE=1)}, "MRDMA disabled"),
                       ({("DPU_RDMA", "EW_BASE_ADDR"): regs.address("DPU_RDMA", "EW_BASE_ADDR", OPND, 16)}, "must follow"),
                       ({("DPU_RDMA", "SURF_NOTCH"): dict(SURF_NOTCH_ADDR=12 * 16)}, "SURF_NOTCH"),
                       ({("DPU_RDMA", "EW_SURF_NOTCH"): dict(EW_SURF_NOTCH=0)}, "EW_SURF_NOTCH"),
                       ({("DPU_RDMA", "EW_SURF_STRIDE"): dict(EW_SURF_STRIDE=plane + 16)}, "EW_SURF_STRIDE"),
                       ({("DPU", "EW_CFG"): Set(EWF, EDATA_SIZE=1), ("DPU_RDMA", "ERDMA_CFG"): Set(ERDMA_DATA_MODE=1, ERDMA_DATA_SIZE=1)},
                        "8-bit EW operand")]:
    r = run_conv(spec, x, w, good | change, buffers={OPND: P.pack_cube(e, "fp16")})
    expect(r, "unsupported", text)

# ------------------------------------------------------------------------------------------------------------------
# register persistence, CBUF reuse
# ------------------------------------------------------------------------------------------------------------------
ADDRESS_REGS = [("CNA", "FEATURE_DATA_ADDR"), ("CNA", "DCOMP_ADDR0"), ("DPU", "DST_BASE_ADDR")]

def test_registers_persist_across_jobs():
  """The register file is not reset between jobs (rocket_fp16_ew_ppu.md §6.D): a second job that writes only the
  three addresses computes the first job's convolution on new buffers."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  rng = np.random.default_rng(22)
  x1, x2, w = rand16(rng, 32, 5, 5), rand16(rng, 32, 5, 5), rand16(rng, 16, 32, 3, 3)
  prog = conv_program(spec, SLOTS)
  delta = {k: v for k, v in prog.items() if k in ADDRESS_REGS}
  delta = {k: regs.address(k[0], k[1], 5 if k[1] == "FEATURE_DATA_ADDR" else 6 if k[1] == "DST_BASE_ADDR" else WT)
           for k in delta}
  with P.Session() as s:
    for slot, data in conv_buffers(spec, x1, w).items(): s.buffer(slot, data)
    s.buffer(5, P.pack_cube(x2, "fp16")); s.buffer(6, spec.OC * spec.OH * spec.OW * 4)
    first = s.run([regs.Task(entries(prog), regs.MESA_CONV_ENABLE)], [OUT])
    second = s.run([regs.Task(entries(delta), regs.MESA_CONV_ENABLE)], [6])
  assert first.failure is None and second.failure is None, (first.failure, second.failure)
  got2 = P.unpack_cube(second.out[6], "fp32", spec.OC, spec.OH, spec.OW)
  assert np.allclose(got2, ref_conv(x2, w, pad=(1, 1))[0], rtol=1e-4, atol=1e-4)
  # the same delta list on a fresh core reads reset (0) registers: not a valid task
  fresh = P.run_program([delta_prog := {k: v for k, v in delta.items()}], conv_buffers(spec, x1, w) | {5: 64, 6: 64}, [6])
  assert fresh.failure is not None and delta_prog

def test_stale_registers_are_used_not_reset():
  """A list that omits BS_CFG inherits the previous job's BS stage (here: ReLU) on the same core, as the hardware does;
  another file lands on another core (round robin) whose BS_CFG is still at reset (0: not a valid stage)."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  rng = np.random.default_rng(23)
  x, w = rand16(rng, 32, 5, 5), rand16(rng, 16, 32, 3, 3)
  relu = conv_program(spec, SLOTS) | {("DPU", "BS_CFG"): dict(BS_ALU_BYPASS=1, BS_MUL_BYPASS=1)}
  omit = {k: v for k, v in conv_program(spec, SLOTS).items() if k != ("DPU", "BS_CFG")}
  npu = Npu()
  with P.Session(npu) as s:
    for slot, data in conv_buffers(spec, x, w).items(): s.buffer(slot, data)
    assert s.run([regs.Task(entries(relu), regs.MESA_CONV_ENABLE)], [OUT]).failure is None
    r = s.run([regs.Task(entries(omit), regs.MESA_CONV_ENABLE)], [OUT])
  got = conv_out(r, spec)
  assert got.min() == 0 and np.allclose(got, np.maximum(ref_conv(x, w, pad=(1, 1))[0], 0), atol=1e-4)
  other = P.run_program(omit, conv_buffers(spec, x, w), [OUT], npu=npu)
  assert other.failure is not None and "BS_ALU_ALGO 0" in other.failure

def test_hang_resets_the_core():
  """After a hang the kernel resets the core (rocket_hw.md §2.5): registers back to 0, so a delta list that relied on
  them now fails instead of computing."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  rng = np.random.default_rng(24)
  x, w = rand16(rng, 32, 5, 5), rand16(rng, 16, 32, 3, 3)
  npu = Npu()
  prog = conv_program(spec, SLOTS)
  with P.Session(npu) as s:
    for slot, data in conv_buffers(spec, x, w).items(): s.buffer(slot, data)
    assert s.run([regs.Task(entries(prog), regs.MESA_CONV_ENABLE)], [OUT]).failure is None
    hang = override(prog, {("DPU_RDMA", "FEATURE_MODE_CFG"): Set(BURST_LEN=15)})
    assert s.run([regs.Task(entries(hang), regs.MESA_CONV_ENABLE)], [OUT]).failure.startswith("hang")
    delta = [regs.address(*k, {"FEATURE_DATA_ADDR": IN, "DCOMP_ADDR0": WT, "DST_BASE_ADDR": OUT}[k[1]]) for k in ADDRESS_REGS]
    assert s.run([regs.Task(delta, regs.MESA_CONV_ENABLE)], [OUT]).failure is not None

def test_weight_reuse_takes_the_weights_from_cbuf():
  """CBUF_CON0.WEIGHT_REUSE: the CNA does not fetch; the weights are those this core loaded last (Mesa sets it on the
  tasks after the first of a split conv). Pointed at other weights, the task still uses the loaded ones."""
  spec = ConvSpec("fp16", 32, 5, 5, 16, 3, 3, (1, 1), (1, 1), out="fp32")
  rng = np.random.default_rng(25)
  x, w, w_other = rand16(rng, 32, 5, 5), rand16(rng, 16, 32, 3, 3), rand16(rng, 16, 32, 3, 3)
  first = conv_program(spec, SLOTS)
  second = override(first, {("CNA", "CBUF_CON0"): dict(WEIGHT_REUSE=1), ("CNA", "DCOMP_ADDR0"): regs.address("CNA", "DCOMP_ADDR0", 5),
                              ("DPU", "DST_BASE_ADDR"): regs.address("DPU", "DST_BASE_ADDR", 6)})
  r = P.run_program([first, second], conv_buffers(spec, x, w) | {5: P.pack_weights(w_other, "fp16"), 6: spec.OC * 25 * 4}, [OUT, 6])
  assert r.failure is None, r.failure
  assert r.out[OUT][:1600] == r.out[6][:1600]
  assert "CNA weight" not in r.stats[0].tasks[1].dma_read

# ------------------------------------------------------------------------------------------------------------------
# every decoded field is exercised
# ------------------------------------------------------------------------------------------------------------------
T = dict(fp="test_fp16_conv_against_float64", prop="test_fp16_conv_property", bf="test_bf16_and_tf32_conv",
         pad="test_fp16_pad_value", lay="test_strided_feature_layout", outl="test_output_surface_stride_and_surface_add",
         i8="test_int8_conv_exact", raw="test_int8_conv_raw_accumulator_output", pix="test_int8_pixel_input",
         fxs="test_float_bs_bn_stages", ixs="test_integer_bs_bn_stages", brd="test_brdma_per_channel_groups",
         fly="test_flying_fp16_ew_ops", rel="test_flying_ew_relu_relux", ib="test_flying_integer_bundle",
         oc="test_out_cvt_float_affine_and_fp16_overflow", ew16="test_conv_fed_ew_add_fp16", ew8="test_conv_fed_ew_add_int8",
         fault="test_dma_outside_the_bos_is_an_iommu_fault", hang="test_hangs", ref="test_refused_configurations",
         geo="test_conv_fed_ew_geometry_outside_the_validated_one_is_refused", reuse="test_weight_reuse_takes_the_weights_from_cbuf",
         split="test_fp16_conv_split_into_row_tasks", cost="test_emu_cost.py::test_macs_and_dma_counters")

def _cov(block, reg, fields, *tests):
  return {(block, reg, f): tests for f in fields.split()}

# (block, register, field) -> the tests whose outcome depends on that field
from test_lut import LUT_COVERAGE  # noqa: E402  (the LUT fields' entries live with the LUT tests)
COVERAGE: dict[tuple[str, str, str], tuple[str, ...]] = {
  **LUT_COVERAGE,
  **_cov("CNA", "CONV_CON1", "NONALIGN_DMA GROUP_LINE_OFF ARGB_IN", T["pix"], T["ref"]),
  **_cov("CNA", "CONV_CON1", "DECONV", T["ref"]),
  **_cov("CNA", "CONV_CON1", "PROC_PRECISION IN_PRECISION", T["bf"], T["i8"], T["ref"]),
  **_cov("CNA", "CONV_CON1", "CONV_MODE", T["fp"], T["i8"], T["ref"]),
  **_cov("CNA", "CONV_CON3", "NN_MODE", T["ref"]),
  **_cov("CNA", "CONV_CON3", "ATROUS_Y_DILATION ATROUS_X_DILATION CONV_Y_STRIDE CONV_X_STRIDE", T["fp"], T["i8"], T["prop"]),
  **_cov("CNA", "DATA_SIZE0", "DATAIN_WIDTH DATAIN_HEIGHT", T["fp"], T["prop"], T["split"], T["ref"]),
  **_cov("CNA", "DATA_SIZE1", "DATAIN_CHANNEL", T["fp"], T["prop"]),
  **_cov("CNA", "DATA_SIZE1", "DATAIN_CHANNEL_REAL", T["cost"], T["ref"]),
  **_cov("CNA", "DATA_SIZE2", "DATAOUT_WIDTH", T["ref"]),
  **_cov("CNA", "DATA_SIZE3", "SURF_MODE DATAOUT_ATOMICS", T["ref"]),
  **_cov("CNA", "WEIGHT_SIZE0", "WEIGHT_BYTES", T["ref"], T["fault"]),
  **_cov("CNA", "WEIGHT_SIZE1", "WEIGHT_BYTES_PER_KERNEL", T["ref"]),
  **_cov("CNA", "WEIGHT_SIZE2", "WEIGHT_WIDTH WEIGHT_HEIGHT WEIGHT_KERNELS", T["fp"], T["prop"], T["ref"]),
  **_cov("CNA", "CBUF_CON0", "WEIGHT_REUSE", T["reuse"], T["ref"]),
  **_cov("CNA", "CBUF_CON0", "DATA_REUSE FC_DATA_BANK WEIGHT_BANK", T["ref"]),
  **_cov("CNA", "CBUF_CON0", "DATA_BANK", T["ref"], "test_int8_width1_exact_cbuf_fit_is_refused"),
  **_cov("CNA", "CBUF_CON1", "DATA_ENTRIES", T["ref"]),
  **_cov("CNA", "CVT_CON0", "CVT_TRUNCATE_0 DATA_SIGN ROUND_TYPE CVT_TYPE", T["pix"]),
  **_cov("CNA", "CVT_CON0", "CVT_BYPASS", T["pix"], T["ref"]),
  **_cov("CNA", "CVT_CON1", "CVT_SCALE0 CVT_OFFSET0", T["pix"]),
  **_cov("CNA", "CVT_CON5", "PER_CHANNEL_CVT_EN", T["pix"]),
  **_cov("CNA", "FC_CON0", "FC_SKIP_EN", T["ref"]),
  **_cov("CNA", "FC_CON1", "DATA_OFFSET", T["ref"]),
  **_cov("CNA", "FC_CON2", "WEIGHT_OFFSET", T["ref"]),
  **_cov("CNA", "PAD_CON0", "PAD_LEFT PAD_TOP", T["fp"], T["i8"], T["split"]),
  **_cov("CNA", "PAD_CON1", "PAD_VALUE", T["pad"], T["i8"], T["pix"]),
  **_cov("CNA", "FEATURE_DATA_ADDR", "FEATURE_BASE_ADDR", T["fault"], T["split"]),
  **_cov("CNA", "DMA_CON1", "LINE_STRIDE", T["lay"], T["pix"], T["ref"]),
  **_cov("CNA", "DMA_CON2", "SURF_STRIDE", T["lay"], T["split"]),
  **_cov("CNA", "DCOMP_CTRL", "DECOMP_CONTROL", T["ref"]),
  **_cov("CNA", "DCOMP_ADDR0", "DECOMPRESS_ADDR0", T["fault"], T["reuse"]),
  **_cov("CORE", "MISC_CFG", "PROC_PRECISION DW_EN", T["fp"], T["ref"]),
  **_cov("CORE", "MISC_CFG", "QD_EN", T["ref"]),
  **_cov("CORE", "DATAOUT_SIZE_0", "DATAOUT_HEIGHT DATAOUT_WIDTH", T["fp"], T["prop"], T["split"]),
  **_cov("CORE", "DATAOUT_SIZE_1", "DATAOUT_CHANNEL", T["fp"], T["ref"]),
  **_cov("CORE", "CLIP_TRUNCATE", "ROUND_TYPE CLIP_TRUNCATE", T["i8"], T["ref"]),
  **_cov("CORE", "UNDOC_3030", "VALUE", T["ref"]),
  **_cov("DPU", "FEATURE_MODE_CFG", "TP_EN OUTPUT_MODE", T["ref"]),
  **_cov("DPU", "FEATURE_MODE_CFG", "CONV_MODE FLYING_MODE", T["fly"], T["ref"], T["hang"]),
  **_cov("DPU", "DATA_FORMAT", "OUT_PRECISION IN_PRECISION PROC_PRECISION", T["fp"], T["raw"], T["ib"], T["ref"], T["hang"]),
  **_cov("DPU", "DATA_FORMAT", "EW_TRUNCATE_NEG MC_SURF_OUT", T["ref"]),
  **_cov("DPU", "DATA_FORMAT", "BN_MUL_SHIFT_VALUE_NEG BS_MUL_SHIFT_VALUE_NEG", T["ixs"], T["brd"], T["ref"]),
  **_cov("DPU", "DST_BASE_ADDR", "DST_BASE_ADDR", T["fault"], T["split"]),
  **_cov("DPU", "DST_SURF_STRIDE", "DST_SURF_STRIDE", T["outl"], T["split"], T["ref"]),
  **_cov("DPU", "DATA_CUBE_WIDTH", "WIDTH", T["fp"], T["ref"]),
  **_cov("DPU", "DATA_CUBE_HEIGHT", "HEIGHT", T["fp"], T["split"]),
  **_cov("DPU", "DATA_CUBE_HEIGHT", "MINMAX_CTL", T["ref"]),
  **_cov("DPU", "DATA_CUBE_NOTCH_ADDR", "NOTCH_ADDR_1 NOTCH_ADDR_0", T["ref"]),
  **_cov("DPU", "DATA_CUBE_CHANNEL", "ORIG_CHANNEL", T["ref"], T["cost"]),
  **_cov("DPU", "DATA_CUBE_CHANNEL", "CHANNEL", T["fp"], T["ref"]),
  **_cov("DPU", "BS_CFG", "BS_ALU_ALGO BS_RELUX_EN BS_RELU_BYPASS BS_MUL_BYPASS BS_ALU_BYPASS BS_BYPASS", T["fxs"], T["ixs"], T["ref"]),
  **_cov("DPU", "BS_CFG", "BS_ALU_SRC", T["i8"], T["brd"], T["ref"]),
  **_cov("DPU", "BS_CFG", "BS_MUL_PRELU", T["ref"]),
  **_cov("DPU", "BS_ALU_CFG", "BS_ALU_OPERAND", T["fxs"], T["ixs"]),
  **_cov("DPU", "BS_MUL_CFG", "BS_MUL_OPERAND BS_MUL_SHIFT_VALUE", T["fxs"], T["ixs"], T["brd"]),
  **_cov("DPU", "BS_MUL_CFG", "BS_MUL_SRC", T["brd"], T["ref"]),
  **_cov("DPU", "BS_MUL_CFG", "BS_TRUNCATE_SRC", T["ref"]),
  **_cov("DPU", "BS_RELUX_CMP_VALUE", "BS_RELUX_CMP_DAT", T["fxs"], T["ixs"]),
  **_cov("DPU", "BN_CFG", "BN_ALU_ALGO BN_RELUX_EN BN_RELU_BYPASS BN_MUL_BYPASS BN_ALU_BYPASS BN_BYPASS", T["fxs"], T["ixs"], T["ref"]),
  **_cov("DPU", "BN_CFG", "BN_ALU_SRC", T["hang"], T["ref"]),
  **_cov("DPU", "BN_CFG", "BN_MUL_PRELU", T["ref"]),
  **_cov("DPU", "BN_ALU_CFG", "BN_ALU_OPERAND", T["fxs"], T["ixs"]),
  **_cov("DPU", "BN_MUL_CFG", "BN_MUL_OPERAND BN_MUL_SHIFT_VALUE", T["fxs"], T["ixs"]),
  **_cov("DPU", "BN_MUL_CFG", "BN_MUL_SRC", T["hang"], T["ref"]),
  **_cov("DPU", "BN_MUL_CFG", "BN_TRUNCATE_SRC", T["ref"]),
  **_cov("DPU", "BN_RELUX_CMP_VALUE", "BN_RELUX_CMP_DAT", T["fxs"]),
  **_cov("DPU", "BS_OW_CFG", "TP_ORG_EN", T["ref"]),
  **_cov("DPU", "BS_OW_CFG", "SIZE_E_2 SIZE_E_1 SIZE_E_0", T["raw"], T["ref"]),
  **_cov("DPU", "BS_OW_CFG", "OD_BYPASS", T["i8"], T["ref"]),
  **_cov("DPU", "BS_OW_CFG", "OW_SRC", T["brd"], T["ref"]),
  **_cov("DPU", "BS_OW_OP", "OW_OP", T["i8"]),
  **_cov("DPU", "WDMA_SIZE_0", "TP_PRECISION CHANNEL_WDMA", T["ref"]),
  **_cov("DPU", "WDMA_SIZE_1", "HEIGHT_WDMA WIDTH_WDMA", T["ref"]),
  **_cov("DPU", "EW_CFG", "EW_CVT_TYPE EW_CVT_ROUND", T["ew8"], T["ref"]),
  **_cov("DPU", "EW_CFG", "EW_DATA_MODE EDATA_SIZE", T["fly"], T["ib"], T["ref"], T["geo"]),
  **_cov("DPU", "EW_CFG", "EW_ALU_ALGO EW_OP_TYPE EW_OP_CVT_BYPASS", T["fly"], T["ib"], T["ref"], T["hang"]),
  **_cov("DPU", "EW_CFG", "EW_RELUX_EN EW_RELU_BYPASS", T["rel"], T["ref"]),
  **_cov("DPU", "EW_CFG", "EW_LUT_BYPASS EW_MUL_PRELU EW_OP_SRC", T["ref"]),
  **_cov("DPU", "EW_CFG", "EW_OP_BYPASS EW_BYPASS", T["fly"], T["oc"], T["ew16"], T["hang"]),
  **_cov("DPU", "EW_CVT_OFFSET_VALUE", "EW_OP_CVT_OFFSET", T["ew8"], T["ref"]),
  **_cov("DPU", "EW_CVT_SCALE_VALUE", "EW_OP_CVT_SHIFT EW_OP_CVT_SCALE", T["ew8"], T["ref"]),
  **_cov("DPU", "EW_CVT_SCALE_VALUE", "EW_TRUNCATE", T["ref"]),
  **_cov("DPU", "EW_RELUX_CMP_VALUE", "EW_RELUX_CMP_DAT", T["rel"]),
  **_cov("DPU", "OUT_CVT_OFFSET", "OUT_CVT_OFFSET", T["i8"], T["oc"], T["ref"]),
  **_cov("DPU", "OUT_CVT_SCALE", "FP32TOFP16_EN", T["fp"], T["oc"], T["ref"]),
  **_cov("DPU", "OUT_CVT_SCALE", "OUT_CVT_SCALE", T["i8"], T["oc"], T["ref"]),
  **_cov("DPU", "OUT_CVT_SHIFT", "CVT_TYPE MINUS_EXP", T["oc"], T["ref"]),
  **_cov("DPU", "OUT_CVT_SHIFT", "CVT_ROUND OUT_CVT_SHIFT", T["i8"], T["ref"]),
  **_cov("DPU", "SURFACE_ADD", "SURF_ADD", T["outl"], T["ref"]),
  **_cov("DPU", "UNDOC_40C4", "VALUE", T["ref"]),
  **_cov("DPU_RDMA", "DATA_CUBE_WIDTH", "WIDTH", T["ref"], T["fly"]),
  **_cov("DPU_RDMA", "DATA_CUBE_HEIGHT", "HEIGHT", T["ref"]),
  **_cov("DPU_RDMA", "DATA_CUBE_HEIGHT", "EW_LINE_NOTCH_ADDR", "test_refused_dpu_rdma_fields"),
  **_cov("DPU_RDMA", "DATA_CUBE_CHANNEL", "CHANNEL", T["ref"]),
  **_cov("DPU_RDMA", "SRC_BASE_ADDR", "SRC_BASE_ADDR", T["fault"], T["fly"], T["ew16"]),
  **_cov("DPU_RDMA", "BRDMA_CFG", "BRDMA_DATA_USE", T["brd"], T["ref"]),
  **_cov("DPU_RDMA", "BS_BASE_ADDR", "BS_BASE_ADDR", T["fault"], T["brd"]),
  **_cov("DPU_RDMA", "NRDMA_CFG", "NRDMA_DATA_USE", T["hang"], T["ref"]),
  **_cov("DPU_RDMA", "ERDMA_CFG", "ERDMA_DATA_MODE ERDMA_DATA_SIZE ERDMA_DISABLE", T["fly"], T["ref"], T["hang"], T["geo"]),
  **_cov("DPU_RDMA", "ERDMA_CFG", "ERDMA_SURF_MODE ERDMA_NONALIGN", T["ref"]),
  **_cov("DPU_RDMA", "EW_BASE_ADDR", "EW_BASE_ADDR", T["fault"], T["fly"], T["ew16"], T["geo"]),
  **_cov("DPU_RDMA", "EW_SURF_STRIDE", "EW_SURF_STRIDE", T["ew16"], T["geo"]),
  **_cov("DPU_RDMA", "FEATURE_MODE_CFG", "IN_PRECISION PROC_PRECISION FLYING_MODE", T["fly"], T["ib"], T["ref"]),
  **_cov("DPU_RDMA", "FEATURE_MODE_CFG", "COMB_USE MRDMA_DISABLE", T["hang"], T["ref"], T["geo"]),
  **_cov("DPU_RDMA", "FEATURE_MODE_CFG", "MRDMA_FP16TOFP32_EN CONV_MODE", T["ref"]),
  **_cov("DPU_RDMA", "SRC_DMA_CFG", "LINE_NOTCH_ADDR POOLING_METHOD UNPOOLING_EN", "test_refused_dpu_rdma_fields"),
  **_cov("DPU_RDMA", "SURF_NOTCH", "SURF_NOTCH_ADDR", T["ew16"], T["geo"]),
  **_cov("DPU_RDMA", "EW_SURF_NOTCH", "EW_SURF_NOTCH", T["ew16"], T["geo"]),
  **{("PPU", f"DATA_CUBE_{io}_{dim}", f"CUBE_{io}_{dim}"): ("test_ppu_pooling", "test_ppu_failures")
     for io in ("IN", "OUT") for dim in ("WIDTH", "HEIGHT", "CHANNEL")},
  **_cov("PPU", "OPERATION_MODE_CFG", "INDEX_EN NOTCH_ADDR FLYING_MODE", "test_ppu_failures"),
  **_cov("PPU", "OPERATION_MODE_CFG", "POOLING_METHOD", "test_ppu_pooling", "test_ppu_failures"),
  **_cov("PPU", "POOLING_KERNEL_CFG", "KERNEL_STRIDE_HEIGHT KERNEL_STRIDE_WIDTH KERNEL_HEIGHT KERNEL_WIDTH", "test_ppu_pooling"),
  **_cov("PPU", "RECIP_KERNEL_WIDTH", "RECIP_KERNEL_WIDTH", "test_ppu_pooling"),
  **_cov("PPU", "RECIP_KERNEL_HEIGHT", "RECIP_KERNEL_HEIGHT", "test_ppu_pooling"),
  **_cov("PPU", "POOLING_PADDING_CFG", "PAD_BOTTOM PAD_RIGHT PAD_TOP PAD_LEFT", "test_ppu_pooling"),
  **_cov("PPU", "PADDING_VALUE_1_CFG", "PAD_VALUE_0", "test_ppu_pooling"),
  **_cov("PPU", "PADDING_VALUE_2_CFG", "PAD_VALUE_1", "test_ppu_failures"),
  **_cov("PPU", "DST_BASE_ADDR", "DST_BASE_ADDR", "test_ppu_pooling", "test_ppu_failures"),
  **_cov("PPU", "DST_SURF_STRIDE", "DST_SURF_STRIDE", "test_ppu_pooling", "test_ppu_failures"),
  **_cov("PPU", "DATA_FORMAT", "DPU_FLYIN PROC_PRECISION", "test_ppu_failures"),
  **_cov("PPU", "MISC_CTRL", "MC_SURF_OUT", "test_ppu_failures"),
  **{("PPU_RDMA", f"CUBE_IN_{dim}", f"CUBE_IN_{dim}"): ("test_ppu_pooling", "test_ppu_failures") for dim in ("WIDTH", "HEIGHT", "CHANNEL")},
  **_cov("PPU_RDMA", "SRC_BASE_ADDR", "SRC_BASE_ADDR", "test_ppu_failures", "test_ppu_chained_sub4_cube_is_refused"),
  **_cov("PPU_RDMA", "SRC_LINE_STRIDE", "SRC_LINE_STRIDE", "test_ppu_pooling", "test_ppu_failures"),
  **_cov("PPU_RDMA", "SRC_SURF_STRIDE", "SRC_SURF_STRIDE", "test_ppu_pooling"),
  **_cov("PPU_RDMA", "DATA_FORMAT", "IN_PRECISION", "test_ppu_failures"),
}

@pytest.mark.parametrize("reg,field", [(("DPU_RDMA", "DATA_CUBE_HEIGHT"), "EW_LINE_NOTCH_ADDR"), (("DPU_RDMA", "SRC_DMA_CFG"), "LINE_NOTCH_ADDR"),
                                       (("DPU_RDMA", "SRC_DMA_CFG"), "POOLING_METHOD"), (("DPU_RDMA", "SRC_DMA_CFG"), "UNPOOLING_EN")])
def test_refused_dpu_rdma_fields(reg, field):
  expect(run_kind("conv16", {reg: {field: 1}}), "unsupported", field)

def test_every_decoded_field_is_covered():
  """The emulator reads only the fields declared in DECODED_FIELDS (descs.Fields refuses others); every one of them is
  listed here with tests whose outcome depends on it, and those tests exist."""
  assert set(COVERAGE) == set(DECODED_FIELDS), (sorted(set(DECODED_FIELDS) - set(COVERAGE)), sorted(set(COVERAGE) - set(DECODED_FIELDS)))
  import importlib
  for key, tests in COVERAGE.items():
    assert tests, key
    for t in tests:
      mod, _, name = t.rpartition("::")
      m = importlib.import_module(mod[:-3].replace("/", ".")) if mod else None
      assert (getattr(m, name, None) if m else globals().get(name)) is not None, f"{key}: no test {t}"

# ------------------------------------------------------------------------------------------------------------------
# PPU pooling
# ------------------------------------------------------------------------------------------------------------------
def run_pool(x, method, k, stride, pad, overrides=None, npu=None, enable=PPU_ENABLE):
  C, H, W = x.shape
  prog = override(ppu_program(C, H, W, method, k, stride, pad, SLOTS), overrides)
  OH, OW = (H + pad[0] + pad[1] - k[0]) // stride[0] + 1, (W + pad[2] + pad[3] - k[1]) // stride[1] + 1
  r = P.run_program(prog, {IN: P.pack_cube(x, "fp16"), OUT: C * OH * OW * 2}, [OUT], enable=enable, npu=npu, fill=SENTINEL)
  return r, (P.unpack_cube(r.out[OUT], "fp16", C, OH, OW) if r.failure is None else None)

def ref_pool(x, method, k, stride, pad):
  pt, pb, pl, pr = pad
  fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[method]
  xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr)), constant_values=fill)
  win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=(1, 2))[:, ::stride[0], ::stride[1]]
  return {"max": win.max((3, 4)), "min": win.min((3, 4)), "avg": win.mean((3, 4))}[method]

POOL_CASES = [("max", (2, 2), (2, 2), (0, 0, 0, 0)), ("max", (3, 3), (2, 2), (1, 1, 1, 1)), ("min", (3, 2), (1, 2), (1, 0, 0, 1)),
              ("avg", (2, 2), (2, 2), (0, 0, 0, 0)), ("avg", (3, 3), (1, 1), (1, 1, 1, 1)), ("avg", (7, 7), (7, 7), (0, 0, 0, 0))]

@pytest.mark.parametrize("method,k,stride,pad", POOL_CASES)
def test_ppu_pooling(method, k, stride, pad):
  """max/min exact (padding taps read PADDING_VALUE: -inf / +inf); average = fp32 window sum (padding counted) times the
  fp16 RECIP values times 2^-32, within 0.1% of the true mean for these kernels (GN: avg within 0.002)."""
  rng = np.random.default_rng(27)
  x = rand16(rng, 16, 14, 14, scale=4)
  r, got = run_pool(x, method, k, stride, pad)
  assert r.failure is None, r.failure
  want = ref_pool(x, method, k, stride, pad)
  if method == "avg":
    rec = lambda n: float(np.float16(65536 / n))
    sums = ref_pool(x, "avg", k, stride, pad) * k[0] * k[1]
    model = (sums.astype(np.float32) * np.float32(rec(k[1])) * np.float32(rec(k[0])) * np.float32(2.0 ** -32)).astype(np.float16)
    assert np.allclose(got, model, rtol=2e-3, atol=1e-3)
    assert np.allclose(got, want, rtol=3e-3, atol=2e-3)
  else:
    assert np.array_equal(got, want.astype(np.float16))
  assert r.stats[0].tasks[0].kind == "ppu"

def test_ppu_failures():
  rng = np.random.default_rng(28)
  x = rand16(rng, 8, 8, 8)
  for ov, text in [({("PPU", "OPERATION_MODE_CFG"): dict(INDEX_EN=1)}, "index"),
                   ({("PPU", "OPERATION_MODE_CFG"): dict(NOTCH_ADDR=1)}, "notches"),
                   ({("PPU", "OPERATION_MODE_CFG"): dict(FLYING_MODE=0)}, "FLYING_MODE 0"),
                   ({("PPU", "OPERATION_MODE_CFG"): dict(POOLING_METHOD=3)}, "POOLING_METHOD 3"),
                   ({("PPU", "DATA_FORMAT"): dict(DPU_FLYIN=1)}, "on-the-fly"),
                   ({("PPU", "DATA_FORMAT"): Set(PROC_PRECISION=0)}, "int8"),
                   ({("PPU", "MISC_CTRL"): dict(MC_SURF_OUT=1)}, "MC_SURF_OUT"),
                   ({("PPU", "PADDING_VALUE_2_CFG"): dict(PAD_VALUE_1=1)}, "34:32"),
                   ({("PPU_RDMA", "DATA_FORMAT"): Set(IN_PRECISION=1)}, "16-bit"),
                   ({("PPU_RDMA", "CUBE_IN_WIDTH"): dict(CUBE_IN_WIDTH=6)}, "PPU_RDMA cube"),
                   ({("PPU", "DATA_CUBE_OUT_CHANNEL"): dict(CUBE_OUT_CHANNEL=7)}, "output channels"),
                   ({("PPU", "DATA_CUBE_OUT_WIDTH"): dict(CUBE_OUT_WIDTH=5)}, "PPU output"),
                   ({("PPU", "DATA_CUBE_IN_CHANNEL"): dict(CUBE_IN_CHANNEL=3), ("PPU", "DATA_CUBE_OUT_CHANNEL"): dict(CUBE_OUT_CHANNEL=3),
                     ("PPU_RDMA", "CUBE_IN_CHANNEL"): dict(CUBE_IN_CHANNEL=3)}, "whole fp16 atoms"),
                   ({("PPU_RDMA", "SRC_LINE_STRIDE"): dict(SRC_LINE_STRIDE=16)}, "overlap"),
                   ({("PPU", "DST_SURF_STRIDE"): dict(DST_SURF_STRIDE=16)}, "overlaps"),
                   ({("PPU", "DST_BASE_ADDR"): regs.address("PPU", "DST_BASE_ADDR", IN)}, "in place")]:
    r, _ = run_pool(np.concatenate([x, x]), "max", (2, 2), (2, 2), (0, 0, 0, 0), ov)
    expect(r, "unsupported", text)
  r, _ = run_pool(x, "max", (2, 2), (2, 2), (0, 0, 0, 0), enable=regs.op_enable_mask("PPU_RDMA"))
  expect(r, "hang", "without the PPU")
  r, _ = run_pool(x, "max", (2, 2), (2, 2), (0, 0, 0, 0), enable=regs.op_enable_mask("PPU"))
  expect(r, "unsupported", "fed by anything but PPU_RDMA")
  r, _ = run_pool(x, "max", (2, 2), (2, 2), (0, 0, 0, 0), enable=regs.op_enable_mask("DPU", "PPU", "PPU_RDMA"))
  expect(r, "unsupported", "together with other blocks")
  prog = override(ppu_program(8, 8, 8, "max", (2, 2), (2, 2), (0, 0, 0, 0), SLOTS),
                    {("PPU_RDMA", "SRC_BASE_ADDR"): regs.address("PPU_RDMA", "SRC_BASE_ADDR", NOWHERE)})
  r = P.run_program(prog, {IN: P.pack_cube(x, "fp16"), OUT: 8 * 16 * 2}, [OUT], enable=PPU_ENABLE,
                    extra_iovas={NOWHERE: UNMAPPED}, fill=SENTINEL)
  expect(r, "iommu", "PPU_RDMA read")

def test_ppu_chained_sub4_cube_is_refused():
  """GN: a PPU pass reading a sub-4x4 cube that the previous PPU pass just wrote gets about half the channels wrong."""
  rng = np.random.default_rng(29)
  x = rand16(rng, 8, 6, 6)
  first = ppu_program(8, 6, 6, "max", (2, 2), (2, 2), (0, 0, 0, 0), SLOTS)              # 6x6 -> 3x3 into OUT
  second = ppu_program(8, 3, 3, "max", (3, 3), (1, 1), (0, 0, 0, 0), dict(input=OUT, output=5))   # reads that 3x3
  with P.Session() as s:
    s.buffer(IN, P.pack_cube(x, "fp16")); s.buffer(OUT, 8 * 9 * 2); s.buffer(5, 16)
    r = s.run([regs.Task(entries(first), PPU_ENABLE), regs.Task(entries(second), PPU_ENABLE)], [5])
  assert r.failure is not None and "sub-4x4" in r.failure
  cpu = P.run_program(second, {OUT: P.pack_cube(ref_pool(x, "max", (2, 2), (2, 2), (0, 0, 0, 0)), "fp16"), 5: 16}, [5],
                      enable=PPU_ENABLE)
  assert cpu.failure is None                                           # a CPU-written sub-4x4 cube is fine
