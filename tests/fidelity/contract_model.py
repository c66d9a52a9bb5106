"""A reduced model of EMULATOR_CONTRACT.md: just the register semantics the fidelity streams rely on, as an executor
`(core, block_mask, mem)` for tinygrad_rocket.emu's Core.

This is NOT the emulator (tinygrad_rocket/emu/blocks.py is) and not a statement about the hardware beyond the
contract: it exists so that test_contract_model.py can run every fidelity test now, end to end through the emulated
kernel driver (EmuFile + RocketDriver), and so prove that the builders, the harness, the decoders, the references and
the contract are consistent with each other. It covers only what these streams program: CNA direct/depthwise
convolution (int8 packed and pixel input, fp16), CORE, DPU BS bias / EW fp16 add / OUT_CVT, WDMA; DPU_RDMA only as
the bias and EW operand reader; the two hang traps. It reads every range through `mem` (IOMMU faults) and checks the
whole output range before writing any of it.
"""
from __future__ import annotations
import numpy as np

def bits(v:int, lo:int, hi:int) -> int: return (v >> lo) & ((1 << (hi - lo + 1)) - 1)
def signed(v:int, n:int) -> int: return v - (1 << n) if v & (1 << (n - 1)) else v

def execute(core, mask:int, mem) -> None:
  from tinygrad_rocket.emu.core import HangError
  R = lambda off: core.regs.get(off, 0)
  ew_cfg, rdma_fmc = R(0x4070), R(0x5044)
  # ---- hangs (rocket_fp16_ew_ppu.md §6.B) ----
  if mask & 0x10 and not bits(R(0x400C), 0, 0) and not bits(rdma_fmc, 4, 4) and bits(rdma_fmc, 8, 10) == 0:
    raise HangError("MRDMA enabled without a feed (DPU fed by the conv, no COMB_USE)")
  if not bits(ew_cfg, 0, 0) and bits(ew_cfg, 6, 6) and bits(R(0x5034), 0, 0):
    raise HangError("EW operand from memory armed while ERDMA is disabled")
  assert mask & 0x0D == 0x0D, f"this model runs CNA+CORE+DPU tasks only (mask {mask:#x})"

  # ---- CNA: feature ----
  con1 = R(0x100C)
  fp = bits(con1, 4, 6) == 2
  esz, c2 = (2, 8) if fp else (1, 16)
  dw = bits(con1, 0, 3) == 3
  W, H = bits(R(0x1020), 16, 26), bits(R(0x1020), 0, 10)
  C = bits(R(0x1024), 0, 15)
  LS, SS, base = bits(R(0x107C), 0, 27), bits(R(0x1080), 0, 27), R(0x1070)
  if bits(con1, 12, 15) == 8:   # pixel mode: uint8 rows of LS bytes, CVT unit converts channel 0
    raw = np.frombuffer(mem.read(base, LS * (H - 1) + W), np.uint8).astype(np.int64)
    q = np.stack([raw[h * LS:h * LS + W] for h in range(H)])
    cvt0, cvt1 = R(0x104C), R(0x1050)
    x = np.zeros((C, H, W), np.int64)
    x[0] = ((q * bits(cvt1, 16, 31)) >> bits(cvt0, 4, 9)) + signed(bits(cvt1, 0, 15), 16)
  else:                         # packed NC1HWC2: row pitch W atoms, surface pitch LS + SS atoms
    surf, nsurf = (LS + SS) * 16, -(-C // c2)
    dt = np.float16 if fp else np.int8
    planes = [np.frombuffer(mem.read(base + g * surf, H * W * 16), dt).reshape(H, W, c2) for g in range(nsurf)]
    x = np.concatenate(planes, axis=2).transpose(2, 0, 1)[:C].astype(np.float64 if fp else np.int64)
  pad = 0.0 if fp else signed(R(0x1184) & 0xFF, 8)

  # ---- geometry ----
  pl, pt = bits(R(0x1068), 4, 7), bits(R(0x1068), 0, 3)
  con3 = R(0x1014)
  sx, sy, dx, dy = bits(con3, 0, 2), bits(con3, 3, 5), bits(con3, 16, 20) + 1, bits(con3, 21, 25) + 1
  KW, KH, kernels = bits(R(0x1038), 24, 28), bits(R(0x1038), 16, 20), bits(R(0x1038), 0, 13)
  OW, OH = bits(R(0x3014), 0, 15) + 1, bits(R(0x3014), 16, 31) + 1
  OC = bits(R(0x3018), 0, 15) + 1
  eh, ew = dy * (KH - 1) + 1, dx * (KW - 1) + 1
  xp = np.full((C, max((OH - 1) * sy + eh, pt + H), max((OW - 1) * sx + ew, pl + W)), pad, x.dtype)
  xp[:, pt:pt + H, pl:pl + W] = x

  # ---- CNA: weights, dense kernel-group x channel-group blocks [row][col][nk][nc] ----
  NG = 1 if dw else (16 if fp else 32)
  G = (32 if fp else 64) if dw else 32
  nker = 1 if dw else kernels
  wraw = np.frombuffer(mem.read(R(0x1110), KH * KW * C * nker * esz), np.float16 if fp else np.int8)
  wraw = wraw.astype(np.float64 if fp else np.int64)
  wt = np.zeros((nker, C, KH, KW), wraw.dtype)
  pos = 0
  for g in range(-(-nker // NG)):
    nk = min(NG, nker - NG * g)
    for j in range(-(-C // G)):
      nc = min(G, C - G * j)
      blk = wraw[pos:pos + KH * KW * nk * nc].reshape(KH, KW, nk, nc)
      pos += blk.size
      wt[NG * g:NG * g + nk, G * j:G * j + nc] = blk.transpose(2, 3, 0, 1)

  # ---- CORE: MAC (+ int8 CPEND, CLIP_TRUNCATE) ----
  acc = np.zeros((OC, OH, OW), wraw.dtype)
  sum_x = np.zeros((C, OH, OW), x.dtype)
  for i in range(KH):
    for j in range(KW):
      patch = xp[:, i * dy:i * dy + (OH - 1) * sy + 1:sy, j * dx:j * dx + (OW - 1) * sx + 1:sx]
      sum_x += patch
      if dw: acc[:C] += patch * wt[0, :, i, j][:, None, None]
      else: acc[:kernels] += np.einsum("chw,oc->ohw", patch, wt[:, :, i, j])
  if fp: acc = acc.astype(np.float32).astype(np.float64)   # exact products, one rounding to fp32
  else:
    if not bits(R(0x4050), 1, 1):                           # CPEND: OW_OP * sum x (float mode: no effect)
      ow_op = signed(R(0x4054) & 0xFFFF, 16)
      if dw: acc[:C] += ow_op * sum_x
      else: acc += ow_op * sum_x.sum(axis=0, keepdims=True)
    t = bits(R(0x301C), 0, 4)
    if t: acc = (acc + (1 << (t - 1))) >> t

  # ---- DPU ----
  bs = R(0x4040)
  if not bits(bs, 0, 0) and not bits(bs, 1, 1) and bits(bs, 8, 8) and bits(R(0x501C), 1, 1):   # bias from BRDMA
    acc = acc + np.frombuffer(mem.read(R(0x5020), 4 * OC), "<i4").astype(acc.dtype)[:, None, None]
  dst, surf_out = R(0x4020), R(0x4024)
  if not bits(ew_cfg, 0, 0):   # fp16 EW add: operand = the fp16 cube at SRC_BASE_ADDR, output layout
    n8 = -(-OC // 8)
    e = np.stack([np.frombuffer(mem.read(R(0x5018) + g * surf_out, OH * OW * 16), np.float16).reshape(OH, OW, 8)
                  for g in range(n8)]).transpose(0, 3, 1, 2).reshape(n8 * 8, OH, OW)[:OC]
    acc = (acc + e.astype(np.float64)).astype(np.float32).astype(np.float64)
  out_prec = bits(R(0x4010), 29, 31)
  if not fp:
    scale, shift, off = R(0x4084) & 0xFFFF, bits(R(0x4088), 0, 11), signed(R(0x4080), 32)
    y = ((acc * scale + (1 << (shift - 1))) >> shift) + off   # half-up; the tests allow any rounding (+-1 LSB)
    out, oc2 = np.clip(y, -128, 127).astype(np.int8), 16
  elif out_prec == 5: out, oc2 = acc.astype(np.float32), 4
  else:
    assert bits(R(0x4084), 16, 16), "fp16 output needs FP32TOFP16_EN"
    out, oc2 = acc.astype(np.float16), 8

  # ---- WDMA: NC1HWC2 with the output C2, surfaces DST_SURF_STRIDE bytes apart, rows OW atoms ----
  nsurf = -(-OC // oc2)
  full = np.zeros((nsurf * oc2, OH, OW), out.dtype)
  full[:OC] = out
  cube = full.reshape(nsurf, oc2, OH, OW).transpose(0, 2, 3, 1)
  for g in range(nsurf): mem.check(dst + g * surf_out, OH * OW * 16)
  for g in range(nsurf): mem.write(dst + g * surf_out, np.ascontiguousarray(cube[g]).tobytes())
