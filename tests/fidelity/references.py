"""Independent numpy references for the fidelity streams (no knowledge of any register or layout).

* `quantized_conv`   TFLite per-tensor uint8 CONV_2D / DEPTHWISE_CONV_2D semantics: int32 accumulation of
                     (q_in - zi)(q_w - zw) over the window (padding contributes real 0, i.e. q_in = zi) plus the bias,
                     requantized with the real multiplier M = si*sw/so, rounded half away from zero, plus zo, clamped
                     to [0, 255].
* `conv2d_f64`, `matmul_f64`   float64 convolution (NCHW-like (C, H, W) input, (OC, C, KH, KW) weights, symmetric or
                     explicit padding, stride, dilation, depthwise) and matmul of the given (fp16-rounded) operands.
* `fp32_accumulation_bound`    the error an fp32 accumulation of fp16 products must meet, derived below.
* `naive_*`          plain-loop versions used only to test the vectorized references on tiny cases.

Error bound for fp16 x fp16 products accumulated in fp32 (Higham, "Accuracy and Stability of Numerical Algorithms",
§2-§3; u = unit roundoff, gamma_n = n*u / (1 - n*u)):

1. Products are exact. An fp16 value has an 11-bit significand, so a*b has at most 22 significant bits, which fit the
   24-bit fp32 significand; |a*b| lies in [2^-48, 65504^2 < 2^32] (or is 0), inside fp32's normal range. So
   p_i = a_i*b_i is represented exactly and the only errors are in the additions.
2. Summation. Any evaluation order (sequential or tree) of s = sum_{i=1..n} p_i with fp32 additions (u = 2^-24)
   gives s_hat = sum p_i (1 + theta_i) with |theta_i| <= gamma_{n-1} (each p_i goes through at most n-1 roundings;
   Higham Lemma 3.1). Hence |s_hat - s| <= gamma_{n-1} * S, S = sum |p_i| = sum |a_i|*|b_i|. Terms that are exact
   zeros (padding taps, padded channels) never round, so n counts the terms that can be non-zero.
   A wider accumulator (NVDLA-style, or "sum in float64 then round once") with unit roundoff u' <= u has error
   <= gamma'_{n-1} S <= gamma_{n-1} S before its final rounding, which is step 3; the bound therefore covers it.
3. Final roundings. The accumulator value is rounded to fp32 (u32 = 2^-24; exact if it already is fp32) and, for an fp16
   output, then to fp16 (u16 = 2^-11, FP32TOFP16_EN). A chain of roundings with unit roundoffs u_1..u_r turns y into
   y * prod(1 + d_j), |d_j| <= u_j. With P = prod(1 + u_j):
       |out - s| <= |s_hat - s| * P + (P - 1) * |s|  <=  gamma_{n-1} * S * P + (P - 1) * |s|.
   fp32 output: P = 1 + 2^-24. fp16 output: P = (1 + 2^-24)(1 + 2^-11) (the fp32 step is kept so the bound also holds
   when the hardware rounds a wide accumulator to fp32 before narrowing).
   A fused EW ADD of an fp16 operand e (exact in fp32) adds one more fp32 rounding of (s_hat + e): then s -> s + e in the
   (P - 1)|.| term and P gains a factor (1 + 2^-24).
4. Underflow. Relative rounding bounds fail for subnormal results; each rounding to a format also allows an absolute
   error of half its smallest subnormal spacing: 2^-25 for fp16 (spacing 2^-24) and 2^-150 for fp32. Overflow (|out| >
   65504 for fp16) is outside the model: references assert it does not happen.
The bound is elementwise; tests compare |out - s| <= bound with s computed in float64 from the fp16-rounded operands
(float64 sums of at most a few thousand such products are exact to far below these tolerances).
"""
from __future__ import annotations
import numpy as np

U32, U16 = 2.0 ** -24, 2.0 ** -11
ETA = {"fp32": 2.0 ** -150, "fp16": 2.0 ** -25}
FP16_MAX = 65504.0

def gamma(n:int, u:float=U32) -> float:
  n = max(int(n), 0)
  assert n * u < 1
  return n * u / (1 - n * u)

def fp32_accumulation_bound(S:np.ndarray, s:np.ndarray, n_terms:int, out:str="fp32", fused_add:bool=False) -> np.ndarray:
  """Elementwise bound on |out - s| (see the module docstring). S = sum |a_i b_i|, s = the exact (float64) result
  (including the fused addend when `fused_add`), n_terms = products per output element that can be non-zero."""
  assert out in ("fp32", "fp16")
  roundings = [U32] + ([U32] if fused_add else []) + ([U16] if out == "fp16" else [])
  P = float(np.prod([1.0 + u for u in roundings]))
  eta = ETA["fp32"] * (1 + fused_add) + (ETA["fp16"] if out == "fp16" else 0.0)
  return gamma(n_terms - 1) * np.abs(S) * P + (P - 1.0) * np.abs(s) + eta

# ------------------------------------------------------------------------------------------------------------
# quantized (TFLite semantics)
# ------------------------------------------------------------------------------------------------------------

def round_half_away(x:np.ndarray) -> np.ndarray:
  return np.sign(x) * np.floor(np.abs(x) + 0.5)

def same_pads(n:int, k:int, stride:int) -> tuple[int, int]:
  out = -(-n // stride)
  total = max((out - 1) * stride + k - n, 0)
  return total // 2, total - total // 2

def quantized_accumulator(q_in:np.ndarray, q_w:np.ndarray, bias:np.ndarray, zi:int, zw:int, stride:int, padding:str,
                          depthwise:bool) -> np.ndarray:
  """int64 (OH, OW, OC): sum over the window of (q_in - zi)(q_w - zw) + bias. q_in (H, W, C); q_w OHWI (OC, KH, KW, C),
  depthwise (1, KH, KW, C)."""
  x = q_in.astype(np.int64) - zi
  w = q_w.astype(np.int64) - zw
  H, W, C = x.shape
  KH, KW = w.shape[1], w.shape[2]
  if padding == "SAME": (pt, pb), (pl, pr) = same_pads(H, KH, stride), same_pads(W, KW, stride)
  else: pt = pb = pl = pr = 0
  xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))           # padded q_in = zi -> 0 here
  OH, OW = (H + pt + pb - KH) // stride + 1, (W + pl + pr - KW) // stride + 1
  win = np.lib.stride_tricks.sliding_window_view(xp, (KH, KW), axis=(0, 1))[::stride, ::stride][:OH, :OW]  # (OH, OW, C, KH, KW)
  if depthwise: acc = np.einsum("hwcij,ijc->hwc", win, w[0])
  else: acc = np.einsum("hwcij,oijc->hwo", win, w)
  return acc + bias.astype(np.int64)

def requantize(acc:np.ndarray, multiplier:float, zo:int) -> np.ndarray:
  return np.clip(zo + round_half_away(acc.astype(np.float64) * multiplier), 0, 255).astype(np.uint8)

def quantized_conv(q_in, q_w, bias, si, zi, sw, zw, so, zo, stride=1, padding="SAME", depthwise=False) -> np.ndarray:
  """uint8 (OH, OW, OC), TFLite semantics with the real multiplier M = si*sw/so (float64)."""
  acc = quantized_accumulator(np.asarray(q_in), np.asarray(q_w), np.asarray(bias), zi, zw, stride, padding, depthwise)
  return requantize(acc, float(si) * float(sw) / float(so), zo)

def quantized_conv_problem(p) -> np.ndarray:
  """quantized_conv on a mesa_int8_conv.QConvProblem (duck-typed: only its public tensors and parameters are read)."""
  return quantized_conv(p.input, p.weights, p.bias, p.input_scale, p.input_zero_point, p.weight_scale, p.weight_zero_point,
                        p.output_scale, p.output_zero_point, p.stride, p.padding, p.depthwise)

def dequantized_float_conv(q_in, q_w, bias, si, zi, sw, zw, so, zo, stride=1, padding="SAME", depthwise=False) -> np.ndarray:
  """The float computation the quantized model approximates: real-valued conv of the dequantized tensors plus the real
  bias (bias scale si*sw), expressed in output quantization units (not rounded, not clamped)."""
  x = (np.asarray(q_in, np.float64) - zi) * si
  w = (np.asarray(q_w, np.float64) - zw) * sw
  H, W, C = x.shape
  KH, KW = w.shape[1], w.shape[2]
  if padding == "SAME": (pt, pb), (pl, pr) = same_pads(H, KH, stride), same_pads(W, KW, stride)
  else: pt = pb = pl = pr = 0
  xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
  OH, OW = (H + pt + pb - KH) // stride + 1, (W + pl + pr - KW) // stride + 1
  win = np.lib.stride_tricks.sliding_window_view(xp, (KH, KW), axis=(0, 1))[::stride, ::stride][:OH, :OW]
  real = np.einsum("hwcij,ijc->hwc", win, w[0]) if depthwise else np.einsum("hwcij,oijc->hwo", win, w)
  real = real + np.asarray(bias, np.float64) * si * sw
  return real / so + zo

def naive_quantized_conv(q_in, q_w, bias, si, zi, sw, zw, so, zo, stride=1, padding="SAME", depthwise=False) -> np.ndarray:
  q_in, q_w = np.asarray(q_in, np.int64), np.asarray(q_w, np.int64)
  H, W, C = q_in.shape
  KH, KW = q_w.shape[1], q_w.shape[2]
  OC = C if depthwise else q_w.shape[0]
  if padding == "SAME":
    OH, OW = -(-H // stride), -(-W // stride)
    pt = max((OH - 1) * stride + KH - H, 0) // 2
    pl = max((OW - 1) * stride + KW - W, 0) // 2
  else: OH, OW, pt, pl = (H - KH) // stride + 1, (W - KW) // stride + 1, 0, 0
  M = float(si) * float(sw) / float(so)
  out = np.zeros((OH, OW, OC), np.uint8)
  for oh in range(OH):
    for ow in range(OW):
      for oc in range(OC):
        acc = int(bias[oc])
        for i in range(KH):
          for j in range(KW):
            h, w = oh * stride + i - pt, ow * stride + j - pl
            if not (0 <= h < H and 0 <= w < W): continue
            if depthwise: acc += (q_in[h, w, oc] - zi) * (q_w[0, i, j, oc] - zw)
            else:
              for c in range(C): acc += (q_in[h, w, c] - zi) * (q_w[oc, i, j, c] - zw)
        v = acc * M
        r = int(np.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)
        out[oh, ow, oc] = min(max(zo + r, 0), 255)
  return out

# ------------------------------------------------------------------------------------------------------------
# float64
# ------------------------------------------------------------------------------------------------------------

def conv2d_f64(x:np.ndarray, w:np.ndarray, stride=(1, 1), pad=(0, 0), dilation=(1, 1), depthwise=False,
               out_hw:tuple[int, int]|None=None, absolute=False) -> np.ndarray:
  """(C, H, W) input, weights (OC, C, KH, KW) or depthwise (C, KH, KW); pad = (top, left) symmetric as in
  gregordinary (bottom/right implied by the output size (in + 2*pad - (dil*(k-1)+1))//stride + 1) or
  (top, bottom, left, right). Out-of-range taps read 0. `absolute` computes sum |x|*|w| instead (for the bound)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  if absolute: x, w = np.abs(x), np.abs(w)
  C, H, W = x.shape
  KH, KW = w.shape[-2], w.shape[-1]
  sy, sx = stride
  dy, dx = dilation
  if len(pad) == 2: pt, pl = pad; pb, pr = pt, pl
  else: pt, pb, pl, pr = pad
  eh, ew = dy * (KH - 1) + 1, dx * (KW - 1) + 1
  OH = (H + pt + pb - eh) // sy + 1 if out_hw is None else out_hw[0]
  OW = (W + pl + pr - ew) // sx + 1 if out_hw is None else out_hw[1]
  # pad generously and read exactly the taps the formula names
  need_h = (OH - 1) * sy + eh
  need_w = (OW - 1) * sx + ew
  xp = np.zeros((C, max(need_h, pt + H), max(need_w, pl + W)))
  xp[:, pt:pt + H, pl:pl + W] = x
  OC = C if depthwise else w.shape[0]
  out = np.zeros((OC, OH, OW))
  for i in range(KH):
    for j in range(KW):
      patch = xp[:, i * dy:i * dy + (OH - 1) * sy + 1:sy, j * dx:j * dx + (OW - 1) * sx + 1:sx]   # (C, OH, OW)
      if depthwise: out += patch * w[:, i, j][:, None, None]
      else: out += np.einsum("chw,oc->ohw", patch, w[:, :, i, j])
  return out

def naive_conv2d_f64(x, w, stride=(1, 1), pad=(0, 0), dilation=(1, 1), depthwise=False) -> np.ndarray:
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  C, H, W = x.shape
  KH, KW = w.shape[-2], w.shape[-1]
  (sy, sx), (pt, pl), (dy, dx) = stride, pad, dilation
  OH = (H + 2 * pt - (dy * (KH - 1) + 1)) // sy + 1
  OW = (W + 2 * pl - (dx * (KW - 1) + 1)) // sx + 1
  OC = C if depthwise else w.shape[0]
  out = np.zeros((OC, OH, OW))
  for oc in range(OC):
    for oh in range(OH):
      for ow in range(OW):
        acc = 0.0
        for i in range(KH):
          for j in range(KW):
            h, ww = oh * sy + i * dy - pt, ow * sx + j * dx - pl
            if not (0 <= h < H and 0 <= ww < W): continue
            if depthwise: acc += x[oc, h, ww] * w[oc, i, j]
            else: acc += sum(x[c, h, ww] * w[oc, c, i, j] for c in range(C))
        out[oc, oh, ow] = acc
  return out

def matmul_f64(a:np.ndarray, b:np.ndarray, absolute=False) -> np.ndarray:
  """C[M, N] = A[M, K] @ B[N, K]^T in float64 (sum |a||b| with `absolute`)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if absolute: a, b = np.abs(a), np.abs(b)
  return a @ b.T
