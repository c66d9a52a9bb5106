"""Tests of the fidelity builders and references alone (no emulator needed)."""
from __future__ import annotations
import numpy as np
import pytest
from hypothesis import given, settings, assume, strategies as st, HealthCheck

from . import mesa_int8_conv as mesa
from . import fp16_streams as f16
from . import references as ref
from .stream import Addr, U32

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IOVAS = {"input": 0x0010_0000, "weights": 0x0020_0000, "bias": 0x0030_0000, "output": 0x0040_0000, "regcmd": 0x0050_0000,
         "addend": 0x0060_0000}
MARKER, CONV_OP_EN = 0x0041000000000000, 0x0081_0000001D_0008

def field(word:int) -> tuple[int, int, int]: return word >> 48, (word >> 16) & U32, word & 0xFFFF

def qproblem(rng, H=8, C=3, OC=5, K=3, stride=1, padding="SAME", depthwise=False, si=0.02, zi=128, sw=0.01, zw=120,
             so=0.05, zo=100, bias_range=1000) -> mesa.QConvProblem:
  x = rng.integers(0, 256, (H, H, C), dtype=np.uint8)
  w = rng.integers(0, 256, ((1 if depthwise else OC), K, K, C), dtype=np.uint8)
  oc = C if depthwise else OC
  b = rng.integers(-bias_range, bias_range + 1, oc).astype(np.int32)
  return mesa.QConvProblem(x, w, b, si, zi, sw, zw, so, zo, stride, padding, depthwise)

@st.composite
def qproblems(draw, max_hw=12, square=True, allow_ragged=True):
  H = draw(st.integers(1, max_hw))
  K = draw(st.sampled_from([1, 3, 5]))
  padding = draw(st.sampled_from(["SAME", "VALID"]))
  assume(padding == "SAME" or K <= H)
  depthwise = draw(st.booleans())
  C = draw(st.integers(2 if depthwise else 1, 70))
  OC = C if depthwise else draw(st.integers(1, 70))
  stride = draw(st.sampled_from([1, 2]))
  zi, zw, zo = (draw(st.integers(0, 255)) for _ in range(3))
  seed = draw(st.integers(0, 2**31))
  scales = [draw(st.floats(1e-3, 0.5)) for _ in range(3)]
  p = qproblem(np.random.default_rng(seed), H, C, OC, K, stride, padding, depthwise, scales[0], zi, scales[1], zw, scales[2], zo)
  if not allow_ragged: assume(not mesa.weights_ragged(p))
  return p

# §3.5 emission order, written out independently of the builder (rocket_hw.md §3.5)
MESA_ORDER = (["CNA_CBUF_CON0", "CNA_DCOMP_REGNUM", "CNA_DCOMP_CTRL", "CNA_CONV_CON1", "DPU_S_POINTER", "DPU_RDMA_S_POINTER",
               "CNA_CONV_CON1", "CNA_CONV_CON2", "CNA_CONV_CON3", "CNA_DATA_SIZE0", "CNA_DATA_SIZE1", "CNA_DATA_SIZE2",
               "CNA_DATA_SIZE3", "CNA_WEIGHT_SIZE0", "CNA_WEIGHT_SIZE1", "CNA_WEIGHT_SIZE2", "CNA_CBUF_CON0", "CNA_CBUF_CON1"]
              + [f"CNA_CVT_CON{i}" for i in range(5)]
              + ["CNA_FC_CON0", "CNA_FC_CON1", "CNA_PAD_CON0", "CNA_FEATURE_DATA_ADDR", "CNA_FC_CON2", "CNA_DMA_CON0", "CNA_DMA_CON1",
                 "CNA_DMA_CON2", "CNA_FC_DATA_SIZE0", "CNA_FC_DATA_SIZE1", "CNA_DCOMP_CTRL", "CNA_DCOMP_REGNUM", "CNA_DCOMP_ADDR0"]
              + [f"CNA_DCOMP_AMOUNT{i}" for i in range(16)]
              + ["CNA_CVT_CON5", "CNA_PAD_CON1", "CORE_MISC_CFG", "CORE_DATAOUT_SIZE_0", "CORE_DATAOUT_SIZE_1", "CORE_CLIP_TRUNCATE",
                 "CORE_3030", "DPU_FEATURE_MODE_CFG", "DPU_DATA_FORMAT", "DPU_OFFSET_PEND", "DPU_DST_BASE_ADDR", "DPU_DST_SURF_STRIDE",
                 "DPU_DATA_CUBE_WIDTH", "DPU_DATA_CUBE_HEIGHT", "DPU_DATA_CUBE_NOTCH_ADDR", "DPU_DATA_CUBE_CHANNEL", "DPU_BS_CFG",
                 "DPU_BS_ALU_CFG", "DPU_BS_MUL_CFG", "DPU_BS_RELUX_CMP_VALUE", "DPU_BS_OW_CFG", "DPU_BS_OW_OP", "DPU_WDMA_SIZE_0",
                 "DPU_WDMA_SIZE_1", "DPU_BN_CFG", "DPU_BN_ALU_CFG", "DPU_BN_MUL_CFG", "DPU_BN_RELUX_CMP_VALUE", "DPU_EW_CFG",
                 "DPU_EW_CVT_OFFSET_VALUE", "DPU_EW_CVT_SCALE_VALUE", "DPU_EW_RELUX_CMP_VALUE", "DPU_OUT_CVT_OFFSET",
                 "DPU_OUT_CVT_SCALE", "DPU_OUT_CVT_SHIFT"]
              + [f"DPU_EW_OP_VALUE_{i}" for i in range(8)]
              + ["DPU_SURFACE_ADD", "DPU_40C4", "DPU_LUT_ACCESS_CFG", "DPU_LUT_ACCESS_DATA", "DPU_LUT_CFG", "DPU_LUT_INFO",
                 "DPU_LUT_LE_START", "DPU_LUT_LE_END", "DPU_LUT_LO_START", "DPU_LUT_LO_END", "DPU_LUT_LE_SLOPE_SCALE",
                 "DPU_LUT_LE_SLOPE_SHIFT", "DPU_LUT_LO_SLOPE_SCALE", "DPU_LUT_LO_SLOPE_SHIFT", "DPU_RDMA_DATA_CUBE_WIDTH",
                 "DPU_RDMA_DATA_CUBE_HEIGHT", "DPU_RDMA_DATA_CUBE_CHANNEL", "DPU_RDMA_SRC_BASE_ADDR", "DPU_RDMA_BRDMA_CFG",
                 "DPU_RDMA_BS_BASE_ADDR", "DPU_RDMA_NRDMA_CFG", "DPU_RDMA_BN_BASE_ADDR", "DPU_RDMA_ERDMA_CFG", "DPU_RDMA_EW_BASE_ADDR",
                 "DPU_RDMA_EW_SURF_STRIDE", "DPU_RDMA_FEATURE_MODE_CFG", "DPU_RDMA_SRC_DMA_CFG", "DPU_RDMA_SURF_NOTCH",
                 "DPU_RDMA_PAD_CFG", "DPU_RDMA_WEIGHT", "DPU_RDMA_EW_SURF_NOTCH"])
OFFSETS = {"CNA_CBUF_CON0": 0x1040, "CNA_CONV_CON1": 0x100C, "CNA_FEATURE_DATA_ADDR": 0x1070, "CNA_DCOMP_ADDR0": 0x1110,
           "CORE_3030": 0x3030, "DPU_40C4": 0x40C4, "DPU_DST_BASE_ADDR": 0x4020, "DPU_RDMA_BS_BASE_ADDR": 0x5020,
           "DPU_RDMA_EW_SURF_NOTCH": 0x506C, "DPU_S_POINTER": 0x4004, "DPU_RDMA_S_POINTER": 0x5004}
TARGETS = {"CNA": 0x0201, "CORE": 0x0801, "DPU": 0x1001, "DPU_RDMA": 0x2001}

def target_of(name:str) -> int: return TARGETS["DPU_RDMA" if name.startswith("DPU_RDMA") else name.split("_")[0]]

# ---------------------------------------------------------------------------------------------------------------
# Mesa int8: list structure
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(qproblems())
def test_mesa_tasks_have_130_entries_in_mesa_order_with_the_tail(p):
  s = mesa.build(p)
  words = s.tasks(IOVAS)
  offs = s.task_offsets()
  for i, (regs, w) in enumerate(zip(s.task_regs, words)):
    assert len(w) == 130
    assert [r.name for r in regs[:126]] == MESA_ORDER
    for r, word in zip(regs[:126], w[:126]):
      assert word >> 48 == target_of(r.name), r.name
      if r.name in OFFSETS: assert word & 0xFFFF == OFFSETS[r.name]
    assert w[-2] == MARKER and w[-1] == CONV_OP_EN
    if len(words) == 1: assert w[-4] == 0 and w[-3] == 0x0101_00000000_0014
    elif i < len(words) - 1:
      assert field(w[-4]) == (0x0101, IOVAS["regcmd"] + offs[i + 1], 0x0010)
      assert field(w[-3]) == (0x0101, 64, 0x0014)    # align((130-4)/2, 2)
    else: assert w[-4] == 0x0101_00000000_0010 and w[-3] == 0x0101_00000000_0014
  assert offs == [1088 * i for i in range(len(words))]   # align(130*8, 64)
  assert s.buffers["regcmd"].size == 1088 * len(words)

def test_mesa_regcmd_bytes_and_relocation():
  p = qproblem(np.random.default_rng(1))
  s = mesa.build(p)
  iovas = dict(IOVAS, input=0x1234_5000)
  blob = s.regcmd_bytes(iovas)
  assert len(blob) == 1088 and blob[1040:] == bytes(48)
  words = np.frombuffer(blob, "<u8")[:130]
  assert list(map(int, words)) == s.tasks(iovas)[0]
  names = [r.name for r in s.task_regs[0]]
  val = lambda n: field(s.tasks(iovas)[0][names.index(n)])[1]
  assert val("CNA_FEATURE_DATA_ADDR") == 0x1234_5000
  assert val("CNA_DCOMP_ADDR0") == IOVAS["weights"] and val("DPU_DST_BASE_ADDR") == IOVAS["output"]
  assert val("DPU_RDMA_BS_BASE_ADDR") == IOVAS["bias"]
  with pytest.raises(KeyError): s.tasks({"input": 0})

# ---------------------------------------------------------------------------------------------------------------
# Mesa int8: register values (rocket_hw.md §4, §5.7)
# ---------------------------------------------------------------------------------------------------------------

def regs_of(s, task=0) -> dict[str, int]:
  out = {}
  for r, w in zip(s.task_regs[task], s.tasks(IOVAS)[task]): out[r.name] = field(w)[1]
  return out

def test_mesa_out_cvt_worked_example():
  # rocket_hw.md §5.7: M = 0.0123 -> E = 120, shift 21. Mesa's formula ((bits >> 9) & 0x7FFF) + 1 | 0x4000 gives
  # 25795 for float32(0.0123) = 0x3C4985F0 (the reference text's "25796" is an arithmetic slip: 25795/2^21 = 0.0123000).
  p = qproblem(np.random.default_rng(0), si=0.0123, sw=1.0, so=1.0, zo=0x80)
  cvt = mesa.out_cvt(p)
  assert mesa.f32_bits(0.0123) == 0x3C4985F0
  assert (cvt.scale, cvt.shift, cvt.offset) == (25795, 21, 0)
  assert abs(cvt.scale / 2 ** cvt.shift - 0.0123) < 2 ** -14 * 0.0123
  r = regs_of(mesa.build(p))
  assert (r["DPU_OUT_CVT_SCALE"], r["DPU_OUT_CVT_SHIFT"], r["DPU_OUT_CVT_OFFSET"]) == (25795, 21, 0)
  # OUT_CVT_OFFSET = zo - 0x80 as 32-bit two's complement
  assert regs_of(mesa.build(qproblem(np.random.default_rng(0), zo=0)))["DPU_OUT_CVT_OFFSET"] == 0xFFFFFF80
  # truncate_bits: a listed weight scale gives CLIP_TRUNCATE 1 and shift one lower
  pt = qproblem(np.random.default_rng(0), sw=np.frombuffer(np.uint32(0x3c0060de).tobytes(), np.float32)[0])
  rt = regs_of(mesa.build(pt))
  assert rt["CORE_CLIP_TRUNCATE"] == 1 and rt["DPU_OUT_CVT_SHIFT"] == mesa.out_cvt(pt).shift
  assert mesa.out_cvt(pt).shift == 141 - (mesa.f32_bits(mesa.out_cvt(pt).multiplier) >> 23) - 1

@SETTINGS
@given(st.floats(1e-6, 100.0))
def test_out_cvt_scale_approximates_the_multiplier(m):
  p = qproblem(np.random.default_rng(0), si=m, sw=1.0, so=1.0)
  cvt = mesa.out_cvt(p)
  approx = cvt.scale / 2.0 ** cvt.shift
  if mesa.out_cvt_edge_bug(p): assert abs(approx * 2 - cvt.multiplier) <= 2 ** -13 * cvt.multiplier
  else: assert abs(approx - cvt.multiplier) <= 2 ** -13 * cvt.multiplier
  assert 0x4000 <= cvt.scale <= 0x8000

def test_mesa_worked_example_geometry():
  # 8x8x3 input, 3x3 kernel, stride 1, SAME, 5 output channels (rocket_hw.md §4.0-§4.4 formulas)
  r = regs_of(mesa.build(qproblem(np.random.default_rng(0), H=8, C=3, OC=5, K=3, zi=128, zw=120)))
  assert r["CNA_CBUF_CON0"] == (11 << 4) | 1            # 1 input bank, 12 - 1 weight banks
  assert r["CNA_CONV_CON1"] == 0 and r["CNA_CONV_CON2"] == (51 + 1) << 4 and r["CNA_CONV_CON3"] == 0x9
  assert r["CNA_DATA_SIZE0"] == 8 << 16 | 8 and r["CNA_DATA_SIZE1"] == 2 << 16 | 16
  assert r["CNA_DATA_SIZE2"] == 8 and r["CNA_DATA_SIZE3"] == 64
  assert r["CNA_WEIGHT_SIZE0"] == 3 * 3 * 16 * 6 and r["CNA_WEIGHT_SIZE1"] == 3 * 3 * 16 and r["CNA_WEIGHT_SIZE2"] == 3 << 24 | 3 << 16 | 6
  assert r["CNA_CBUF_CON1"] == 2                       # ceil(8*2*ceil(3/16)/8)
  assert r["CNA_CVT_CON0"] == 0xB and all(r[f"CNA_CVT_CON{i}"] == 0x10000 for i in range(1, 5)) and r["CNA_CVT_CON5"] == 0
  assert r["CNA_PAD_CON0"] == 0x11 and r["CNA_DMA_CON0"] == 0x000F000F
  assert r["CNA_DMA_CON1"] == 32 and r["CNA_DMA_CON2"] == 8 * (8 - 4)   # 4*W, W*(H-4)
  assert r["CNA_FC_DATA_SIZE0"] == 8 << 16 | 8 and r["CNA_FC_DATA_SIZE1"] == 16 and r["CNA_PAD_CON1"] == 0
  assert r["CORE_MISC_CFG"] == 1 and r["CORE_DATAOUT_SIZE_0"] == 7 << 16 | 7 and r["CORE_DATAOUT_SIZE_1"] == 31
  assert r["DPU_S_POINTER"] == 0xE and r["DPU_RDMA_S_POINTER"] == 0xE
  assert r["DPU_FEATURE_MODE_CFG"] == 0x1E4 and r["DPU_DATA_FORMAT"] == 0
  assert r["DPU_DST_SURF_STRIDE"] == 64 * 16 and r["DPU_DATA_CUBE_CHANNEL"] == 4 << 16 | 31
  assert r["DPU_BS_CFG"] == 0x20150 and r["DPU_BS_OW_CFG"] == 0x124 and r["DPU_BS_OW_OP"] == 8
  assert r["DPU_WDMA_SIZE_0"] == 31 and r["DPU_WDMA_SIZE_1"] == 7 << 16 | 7
  assert r["DPU_BN_CFG"] == 0x53 and r["DPU_EW_CFG"] == 0x383 and r["DPU_EW_CVT_SCALE_VALUE"] == 1
  assert r["DPU_SURFACE_ADD"] == 2 * 64 * 16
  assert r["DPU_RDMA_BRDMA_CFG"] == 2 and r["DPU_RDMA_ERDMA_CFG"] == 1 and r["DPU_RDMA_FEATURE_MODE_CFG"] == 0x7810
  assert r["DPU_RDMA_WEIGHT"] == 0x01010101 and r["DPU_RDMA_DATA_CUBE_CHANNEL"] == 31

def test_mesa_special_cases():
  rng = np.random.default_rng(2)
  # depthwise: CONV_MODE 3, DW_EN, SIZE_E 3, SURFACE_ADD doubled, OCa doubled then 64-aligned, WEIGHT_KERNELS 1
  r = regs_of(mesa.build(qproblem(rng, H=8, C=24, K=3, depthwise=True)))
  assert r["CNA_CONV_CON1"] == 3 and r["CORE_MISC_CFG"] == 3 and r["DPU_FEATURE_MODE_CFG"] == 0x1FC
  assert r["DPU_BS_OW_CFG"] == 0x36C and r["DPU_RDMA_FEATURE_MODE_CFG"] == 0x7816
  assert r["CORE_DATAOUT_SIZE_1"] == 63 and r["DPU_DATA_CUBE_CHANNEL"] == 23 << 16 | 63
  assert r["DPU_SURFACE_ADD"] == 4 * 64 * 16 and r["CNA_WEIGHT_SIZE2"] & 0x3FFF == 1
  # C == 1 (OC > 1): CVT path, raw rows of max(W,16) bytes
  s = mesa.build(qproblem(rng, H=5, C=1, OC=4, K=3, zi=7))
  r = regs_of(s)
  assert r["CNA_CONV_CON1"] == 0x60008000 and r["CNA_CVT_CON0"] == 0x038E38E0 and r["CNA_CVT_CON1"] == 0x4000FF80
  assert r["CNA_CVT_CON5"] == 0xFFFF and r["CNA_DATA_SIZE0"] == 16 << 16 | 5 and r["CNA_DMA_CON1"] == 16
  assert r["CNA_DMA_CON2"] == 16 * 4 and r["CNA_CBUF_CON1"] == 16 * 5 and r["CNA_FC_DATA_SIZE0"] == 5 << 16 | 5
  assert s.meta["input_mode"] == "rows"
  # PAD_CON1 overrides
  assert regs_of(mesa.build(qproblem(rng, K=3, zi=0)))["CNA_PAD_CON1"] == 0xFFFF8080
  assert regs_of(mesa.build(qproblem(rng, K=1, zi=0)))["CNA_PAD_CON1"] == 0xFFFFFF80
  assert regs_of(mesa.build(qproblem(rng, C=8, K=3, zi=0x8B, depthwise=True)))["CNA_PAD_CON1"] == 0x0B0B
  assert regs_of(mesa.build(qproblem(rng, K=3, zi=0x90)))["CNA_PAD_CON1"] == 0x10
  # stride 2: FEATURE_GRAINS 53, CONV_CON3 0x12
  r = regs_of(mesa.build(qproblem(rng, H=9, stride=2)))
  assert r["CNA_CONV_CON2"] == 53 << 4 and r["CNA_CONV_CON3"] == 2 | 2 << 3
  # H < 4: the float SURF_STRIDE goes negative and is masked to 28 bits (int field, CNA_DMA_CON2_SURF_STRIDE macro)
  assert regs_of(mesa.build(qproblem(rng, H=3, C=16)))["CNA_DMA_CON2"] == (-3) & 0x0FFFFFFF

def test_mesa_rejects_non_square():
  rng = np.random.default_rng(0)
  p = mesa.QConvProblem(rng.integers(0, 256, (4, 6, 3)), rng.integers(0, 256, (2, 3, 3, 3)), np.zeros(2, np.int32),
                        0.1, 0, 0.1, 0, 0.1, 0)
  with pytest.raises(AssertionError, match="square"): mesa.build(p)
  p = mesa.QConvProblem(rng.integers(0, 256, (6, 6, 3)), rng.integers(0, 256, (2, 1, 3, 3)), np.zeros(2, np.int32),
                        0.1, 0, 0.1, 0, 0.1, 0, padding="VALID")
  with pytest.raises(AssertionError, match="square"): mesa.build(p)

# ---------------------------------------------------------------------------------------------------------------
# Mesa int8: packing
# ---------------------------------------------------------------------------------------------------------------

@SETTINGS
@given(qproblems())
def test_mesa_packing_inverts(p):
  s = mesa.build(p)
  inp = s.buffers["input"]
  assert len(inp.data) <= inp.size
  assert np.array_equal(mesa.unpack_input(p, inp.data), p.input)
  w = s.buffers["weights"]
  assert len(w.data) <= w.size
  assert np.array_equal(mesa.unpack_weights(p, w.data), p.weights)
  out = np.random.default_rng(0).integers(0, 256, (p.OH, p.OW, p.OC), dtype=np.uint8)
  raw = mesa.encode_output(p, out)
  assert len(raw) == s.buffers["output"].size and np.array_equal(s.decode(raw), out)
  assert len(s.buffers["bias"].data) == 4 * p.OC

def test_mesa_input_layout_by_hand():
  rng = np.random.default_rng(3)
  p = qproblem(rng, H=4, C=20, OC=2, K=1, zi=9)
  b = np.frombuffer(mesa.pack_input(p), np.uint8)
  assert len(b) == 2 * 4 * 4 * 16 and mesa.input_buffer_size(p) == 4 * 4 * 2 * 2 * 16
  for (h, w, c) in [(0, 0, 0), (1, 2, 5), (3, 3, 17), (2, 1, 19)]:
    assert b[(c // 16) * 4 * 4 * 16 + (h * 4 + w) * 16 + c % 16] == p.input[h, w, c] ^ 0x80
  assert b[1 * 4 * 4 * 16 + 5 * 16 + 4] == (9 - 0x80) & 0xFF        # pad channel 20 holds zi - 0x80
  p1 = qproblem(rng, H=3, C=1, OC=2, K=1, zi=9)
  rows = np.frombuffer(mesa.pack_input(p1), np.uint8).reshape(3, 16)
  assert np.array_equal(rows[:, :3], p1.input[:, :, 0]) and np.all(rows[:, 3:] == 9)
  p2 = qproblem(rng, H=3, C=1, OC=1, K=1)
  assert mesa.pack_input(p2) == p2.input.tobytes() and mesa.input_mode(p2) == "verbatim"

def test_mesa_weight_loop_by_hand():
  # C = 40 (ICa 48): the second 32-channel block carries 16 channels (8 real + 8 pad bytes zw-0x80) per kernel per tap
  rng = np.random.default_rng(4)
  p = qproblem(rng, H=4, C=40, OC=4, K=1, zw=5)
  b = np.frombuffer(mesa.pack_weights(p), np.uint8)
  assert len(b) == 4 * 48
  blk0, blk1 = b[:4 * 32].reshape(4, 32), b[4 * 32:].reshape(4, 16)
  assert np.array_equal(blk0, p.weights[:, 0, 0, :32] ^ 0x80)
  assert np.array_equal(blk1[:, :8], p.weights[:, 0, 0, 32:] ^ 0x80) and np.all(blk1[:, 8:] == (5 - 0x80) & 0xFF)
  assert not mesa.weights_ragged(p)
  assert mesa.weights_buffer_size(p) == 1 * 1 * 4 * 64 * 2
  # OC = 3: kernel 3 (align(OC,2) padding) is emitted as 0x00 for EVERY ic2 of the block, before the channel check,
  # so it carries 32 bytes in the 16-channel block: Mesa's loop is ragged there (3*16 + 32 bytes)
  p3 = qproblem(rng, H=4, C=40, OC=3, K=1, zw=5)
  b3 = np.frombuffer(mesa.pack_weights(p3), np.uint8)
  assert len(b3) == 4 * 32 + 3 * 16 + 32 and mesa.weights_ragged(p3)
  assert np.all(b3[4 * 32 + 3 * 16:] == 0) and np.all(b3[3 * 32:4 * 32] == 0)

@pytest.mark.parametrize("C,OC,dw,ragged", [(3, 7, False, False), (16, 7, False, False), (20, 8, False, True), (31, 8, False, True),
                                            (40, 8, False, False), (40, 7, False, True), (40, 1, False, True), (50, 7, False, False),
                                            (120, 7, False, False), (120, 1, False, False), (32, 1, False, False), (1, 1, False, False),
                                            (8, 8, True, False), (40, 40, True, True), (48, 48, True, False),
                                            (80, 80, True, False), (100, 100, True, True), (72, 72, True, False)])
def test_mesa_weight_raggedness(C, OC, dw, ragged):
  p = qproblem(np.random.default_rng(5), H=4, C=C, OC=OC, K=3, depthwise=dw)
  assert mesa.weights_ragged(p) == ragged
  if not ragged:   # Mesa's loop emits exactly the dense layout the registers declare (WEIGHT_SIZE0 bytes)
    assert len(mesa.pack_weights(p)) == regs_of(mesa.build(p))["CNA_WEIGHT_SIZE0"]

@SETTINGS
@given(qproblems())
def test_mesa_bias_correction_makes_the_hardware_accumulator_exact(p):
  """§5.4: with x = q_in - 0x80 (padding x = low byte of PAD_CON1), w = q_w - 0x80, OW_OP = 0x80 - zw and the packed
  bias, acc = sum x*w + OW_OP * sum x + bias_npu equals TFLite's sum (q_in - zi)(q_w - zw) + bias (truncate_bits 0)."""
  assume(mesa.truncate_bits_for(p.weight_scale) == 0)
  s = mesa.build(p)
  r = regs_of(s)
  pad = np.int8(np.uint8(r["CNA_PAD_CON1"] & 0xFF))
  ow_op = np.int16(np.uint16(r["DPU_BS_OW_OP"]))
  bias_npu = np.frombuffer(s.buffers["bias"].data, "<i4").astype(np.int64)
  x = p.input.astype(np.int64) - 0x80
  w = p.weights.astype(np.int64) - 0x80
  pt, pb, pl, pr = p.pads()
  xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)), constant_values=int(pad))
  win = np.lib.stride_tricks.sliding_window_view(xp, (p.KH, p.KW), axis=(0, 1))[::p.stride, ::p.stride][:p.OH, :p.OW]
  if p.depthwise:
    sxw, sx = np.einsum("hwcij,ijc->hwc", win, w[0]), win.sum(axis=(3, 4))
  else:
    sxw, sx = np.einsum("hwcij,oijc->hwo", win, w), win.sum(axis=(2, 3, 4))[:, :, None]
  acc_hw = sxw + int(ow_op) * sx + bias_npu
  acc_tfl = ref.quantized_accumulator(p.input, p.weights, p.bias, p.input_zero_point, p.weight_zero_point, p.stride,
                                      p.padding, p.depthwise)
  assert np.array_equal(acc_hw, acc_tfl)

# ---------------------------------------------------------------------------------------------------------------
# Mesa int8: task split
# ---------------------------------------------------------------------------------------------------------------

SPLIT_CASES = [dict(H=80, C=64, OC=8, K=3, stride=1, padding="SAME"), dict(H=80, C=64, OC=8, K=3, stride=2, padding="SAME"),
               dict(H=56, C=128, OC=16, K=1, stride=1, padding="VALID"), dict(H=112, C=32, OC=32, K=3, stride=2, padding="SAME"),
               dict(H=96, C=48, OC=24, K=5, stride=1, padding="SAME"), dict(H=64, C=128, OC=256, K=3, stride=1, padding="SAME"),
               dict(H=90, C=96, OC=8, K=5, stride=2, padding="VALID"), dict(H=72, C=96, OC=96, K=3, stride=1, padding="SAME", depthwise=True),
               dict(H=40, C=256, OC=160, K=3, stride=1, padding="SAME")]   # weights too big to stay in CBUF: one job per task

@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_mesa_split_covers_every_output_row_once(case):
  p = qproblem(np.random.default_rng(6), **case)
  s = mesa.build(p)
  tasks, op = s.meta["split"], s.meta["op"]
  assert len(tasks) > 1, "case should need a split"
  pt = p.pads()[0]
  rows_done = 0
  for i, t in enumerate(tasks):
    assert t.pad_top == (pt if i == 0 else 0) and t.pad_bottom == (p.pads()[1] if i == len(tasks) - 1 else 0)
    assert t.input_offset == p.W * 16 * t.top_slice and t.output_offset == p.OW * 16 * rows_done
    assert t.input_height == t.bottom_slice - t.top_slice + 1 <= (256 * t.input_banks) // mesa.calc_entries_per_slice(op)
    for j in range(t.output_height):   # local output row j of task i is global row rows_done + j
      g = rows_done + j
      first = t.top_slice - t.pad_top + j * p.stride          # the window the task computes
      assert first == g * p.stride - pt                        # ... is the one the global row needs
      need = [r for r in range(first, first + p.KH) if 0 <= r < p.H]
      assert all(t.top_slice <= r <= t.bottom_slice for r in need)
    if i > 0:
      prev = tasks[i - 1]
      assert t.num_overlap_slices == prev.bottom_slice - t.top_slice + 1 >= p.KH - p.stride
    rows_done += t.output_height
  assert rows_done == p.OH
  r = [regs_of(s, i) for i in range(len(tasks))]
  for i, t in enumerate(tasks):
    assert r[i]["CNA_FEATURE_DATA_ADDR"] == IOVAS["input"] + t.input_offset
    assert r[i]["DPU_DST_BASE_ADDR"] == IOVAS["output"] + t.output_offset
    assert r[i]["CNA_DATA_SIZE0"] & 0x7FF == t.input_height and r[i]["CORE_DATAOUT_SIZE_0"] >> 16 == t.output_height - 1
    assert r[i]["DPU_DST_SURF_STRIDE"] == p.OH * p.OW * 16          # the full op's surface, in every task
    assert r[i]["CNA_DMA_CON2"] == p.W * (p.H - 4)                   # SURF_STRIDE from the full op height
    assert (r[i]["CNA_CBUF_CON0"] >> 13) & 1 == int(i > 0 and op.reuse_weights_cbuf)
  assert s.jobs == ([list(range(len(tasks)))] if op.reuse_weights_cbuf else [[i] for i in range(len(tasks))])
  if not op.reuse_weights_cbuf: assert all(t.input_banks == 7 and t.weights_banks == 5 for t in tasks)

def test_mesa_small_problem_is_one_task():
  s = mesa.build(qproblem(np.random.default_rng(0), H=16, C=32, OC=32))
  assert len(s.task_regs) == 1 and s.jobs == [[0]] and s.meta["split"][0].input_offset == 0

# ---------------------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.sampled_from([1, 3]), st.sampled_from([1, 2]),
       st.sampled_from(["SAME", "VALID"]), st.booleans(), st.integers(0, 2**31))
def test_quantized_reference_matches_naive_loops(H, C, OC, K, stride, padding, depthwise, seed):
  assume(padding == "SAME" or K <= H)
  p = qproblem(np.random.default_rng(seed), H, C, C if depthwise else OC, K, stride, padding, depthwise,
               zi=seed % 256, zw=(seed // 7) % 256, zo=(seed // 11) % 256)
  args = (p.input, p.weights, p.bias, p.input_scale, p.input_zero_point, p.weight_scale, p.weight_zero_point,
          p.output_scale, p.output_zero_point, stride, padding, depthwise)
  assert np.array_equal(ref.quantized_conv(*args), ref.naive_quantized_conv(*args))
  assert ref.quantized_conv(*args).shape == (p.OH, p.OW, p.OC)
  # and within 1 LSB of the float computation it approximates (clamped to the uint8 range)
  f = np.clip(ref.dequantized_float_conv(*args), 0, 255)
  assert np.max(np.abs(ref.quantized_conv(*args).astype(np.float64) - f)) <= 1.0

def test_round_half_away_from_zero():
  assert list(ref.round_half_away(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999]))) == [-3, -2, -1, 1, 2, 3, 2]

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 2), st.integers(1, 2), st.integers(0, 2), st.integers(0, 2), st.integers(1, 2), st.booleans(), st.integers(0, 99))
def test_float_conv_reference_matches_naive(C, H, W, OC, KH, KW, sy, sx, pt, pl, dil, dw, seed):
  assume((H + 2 * pt - (dil * (KH - 1) + 1)) >= 0 and (W + 2 * pl - (dil * (KW - 1) + 1)) >= 0)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((C, H, W))
  w = rng.standard_normal((C, KH, KW) if dw else (OC, C, KH, KW))
  a = ref.conv2d_f64(x, w, (sy, sx), (pt, pl), (dil, dil), dw)
  b = ref.naive_conv2d_f64(x, w, (sy, sx), (pt, pl), (dil, dil), dw)
  assert a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-12)
  assert np.allclose(ref.conv2d_f64(x, w, (sy, sx), (pt, pl), (dil, dil), dw, absolute=True),
                     ref.naive_conv2d_f64(np.abs(x), np.abs(w), (sy, sx), (pt, pl), (dil, dil), dw))

def test_matmul_reference():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7))
  assert np.allclose(ref.matmul_f64(a, b), [[sum(a[i, k] * b[j, k] for k in range(7)) for j in range(3)] for i in range(5)])

@pytest.mark.parametrize("K", [1, 16, 300, 2048])
@pytest.mark.parametrize("out", ["fp32", "fp16"])
def test_fp32_accumulation_bound_holds_and_is_tight(K, out):
  """A sequential fp32 accumulation of fp16 products (the model the bound is derived for) and numpy's pairwise
  float32 sum both meet it; an fp16 accumulator (a wrong datapath) violates it."""
  rng = np.random.default_rng(K)
  a = rng.uniform(-1, 1, (64, K)).astype(np.float16)
  b = rng.uniform(-1, 1, (8, K)).astype(np.float16)
  exact = ref.matmul_f64(a, b)
  S = ref.matmul_f64(a, b, absolute=True)
  bound = ref.fp32_accumulation_bound(S, exact, K, out)
  prods = a.astype(np.float32)[:, None, :] * b.astype(np.float32)[None, :, :]        # exact in fp32
  assert np.array_equal(prods.astype(np.float64), a.astype(np.float64)[:, None, :] * b.astype(np.float64)[None, :, :])
  seq = np.zeros(exact.shape, np.float32)
  for k in range(K): seq = (seq + prods[:, :, k]).astype(np.float32)
  pair = prods.sum(axis=2, dtype=np.float32)
  cast = (lambda v: v.astype(np.float16).astype(np.float64)) if out == "fp16" else (lambda v: v.astype(np.float64))
  for acc in (seq, pair):
    assert np.all(np.abs(cast(acc) - exact) <= bound)
  if K >= 300:
    h = np.zeros(exact.shape, np.float16)
    for k in range(K): h = (h + prods[:, :, k].astype(np.float16)).astype(np.float16)
    assert np.any(np.abs(h.astype(np.float64) - exact) > bound)

def test_fp32_accumulation_bound_with_fused_add():
  rng = np.random.default_rng(9)
  a = rng.uniform(-1, 1, (16, 96)).astype(np.float16)
  b = rng.uniform(-1, 1, (16, 96)).astype(np.float16)
  e = rng.uniform(-4, 4, (16, 16)).astype(np.float16)
  acc = (a.astype(np.float32) @ b.astype(np.float32).T).astype(np.float32)
  out = (acc + e.astype(np.float32)).astype(np.float32).astype(np.float16)
  exact = ref.matmul_f64(a, b) + e.astype(np.float64)
  bound = ref.fp32_accumulation_bound(ref.matmul_f64(a, b, absolute=True), exact, 96, "fp16", fused_add=True)
  assert np.all(np.abs(out.astype(np.float64) - exact) <= bound)
  assert ref.gamma(1) == 2 ** -24 / (1 - 2 ** -24) and ref.gamma(0) == 0

# ---------------------------------------------------------------------------------------------------------------
# fp16 streams
# ---------------------------------------------------------------------------------------------------------------

def f16regs(s) -> dict[str, int]: return regs_of(s)

def test_gn_matmul_fp16_worked_example():
  # rocket_fp16_ew_ppu.md §2.1 example column: M=64, K=256, N=128
  rng = np.random.default_rng(0)
  p = f16.MatmulProblem(rng.standard_normal((64, 256)), rng.standard_normal((128, 256)), out_fp16=False)
  s = f16.build_matmul_fp16(p)
  w = s.tasks(IOVAS)[0]
  assert len(w) == 126 and w[-4] == 0 and w[-3] == 0x0101_00000000_0014 and w[-2] == MARKER and w[-1] == CONV_OP_EN
  r = f16regs(s)
  expect = {"CNA_CONV_CON1": 0x120, "CNA_CONV_CON2": 0x410, "CNA_CONV_CON3": 0x9, "CNA_DATA_SIZE0": 0x10040,
            "CNA_DATA_SIZE1": 0x00FF0100, "CNA_DATA_SIZE2": 1, "CNA_DATA_SIZE3": 64, "CNA_WEIGHT_SIZE0": 65536,
            "CNA_WEIGHT_SIZE1": 512, "CNA_WEIGHT_SIZE2": 0x01010080, "CNA_CBUF_CON0": 0xB1, "CNA_CBUF_CON1": 8,
            "CNA_CVT_CON0": 0xB, "CNA_CVT_CON1": 0x10000, "CNA_DMA_CON0": 0x000F000F, "CNA_DMA_CON1": 4, "CNA_DMA_CON2": 60,
            "CNA_FC_DATA_SIZE0": 1 << 16 | 64, "CNA_FC_DATA_SIZE1": 256, "CNA_PAD_CON1": 0, "CORE_MISC_CFG": 0x201,
            "CORE_DATAOUT_SIZE_0": 0x3F0000, "CORE_DATAOUT_SIZE_1": 127, "CORE_CLIP_TRUNCATE": 0, "CORE_3030": 0,
            "DPU_FEATURE_MODE_CFG": 0x1E4, "DPU_DATA_FORMAT": 0xA8000002, "DPU_DST_SURF_STRIDE": 0x400,
            "DPU_DATA_CUBE_WIDTH": 0, "DPU_DATA_CUBE_HEIGHT": 63, "DPU_DATA_CUBE_CHANNEL": 127 << 16 | 127, "DPU_BS_CFG": 0x53,
            "DPU_BN_CFG": 0x53, "DPU_BS_OW_CFG": 0x36E, "DPU_BS_OW_OP": 0, "DPU_WDMA_SIZE_0": 127, "DPU_WDMA_SIZE_1": 63 << 16,
            "DPU_EW_CFG": 0x383, "DPU_EW_CVT_SCALE_VALUE": 1, "DPU_OUT_CVT_OFFSET": 0, "DPU_OUT_CVT_SCALE": 1,
            "DPU_OUT_CVT_SHIFT": 0, "DPU_SURFACE_ADD": 0x1000, "DPU_RDMA_FEATURE_MODE_CFG": 0x7810, "DPU_RDMA_ERDMA_CFG": 1,
            "DPU_RDMA_DATA_CUBE_HEIGHT": 63, "DPU_RDMA_DATA_CUBE_CHANNEL": 127, "DPU_RDMA_WEIGHT": 0x01010101,
            "DPU_S_POINTER": 0xE, "DPU_RDMA_S_POINTER": 0xE, "CNA_FEATURE_DATA_ADDR": IOVAS["input"],
            "CNA_DCOMP_ADDR0": IOVAS["weights"], "DPU_DST_BASE_ADDR": IOVAS["output"]}
  assert {k: r[k] for k in expect} == expect
  r16 = f16regs(f16.build_matmul_fp16(f16.MatmulProblem(p.a, p.b, out_fp16=True)))
  assert r16["DPU_DATA_FORMAT"] == 0x48000002 and r16["DPU_BS_OW_CFG"] == 0x126 and r16["DPU_OUT_CVT_SCALE"] == 0x10001
  assert r16["DPU_SURFACE_ADD"] == 64 * 2 << 4 and r16["DPU_RDMA_FEATURE_MODE_CFG"] == 0x7818

def test_mtx_matmul_is_the_108_entry_vendor_list():
  rng = np.random.default_rng(0)
  p = f16.MatmulProblem(rng.standard_normal((8, 64)), rng.standard_normal((16, 64)))
  gn, mtx = f16.build_matmul_fp16(p), f16.build_matmul_fp16(p, "mtx")
  w = mtx.tasks(IOVAS)[0]
  assert len(w) == 108 and w[-1] == 0x0081_0000000D_0008 and w[-2] == MARKER and w[-4] == 0
  assert not any(x >> 48 == 0x2001 for x in w)
  # every non-RDMA register has the same value as in gregordinary's copy
  gw = [x for x in gn.tasks(IOVAS)[0] if x >> 48 != 0x2001]
  assert gw[:-1] == w[:-1]

def test_gn_matmul_accumulate_registers():
  rng = np.random.default_rng(1)
  p = f16.MatmulProblem(rng.standard_normal((16, 64)), rng.standard_normal((32, 64)), out_fp16=True,
                        addend=rng.standard_normal((16, 32)))
  s = f16.build_matmul_fp16(p)
  r = f16regs(s)
  assert r["DPU_EW_CFG"] == 0x108202C0 and r["DPU_RDMA_ERDMA_CFG"] == 0x40000008 and r["DPU_RDMA_FEATURE_MODE_CFG"] == 0x17D40
  assert r["DPU_RDMA_SRC_BASE_ADDR"] == IOVAS["addend"] and r["DPU_RDMA_EW_BASE_ADDR"] == IOVAS["addend"] + 16 * 16
  assert r["DPU_RDMA_EW_SURF_STRIDE"] == r["DPU_RDMA_SURF_NOTCH"] == r["DPU_RDMA_EW_SURF_NOTCH"] == 16 << 4
  assert len(s.task_regs[0]) == 126
  assert np.array_equal(f16.unpack_feature(np.frombuffer(s.buffers["addend"].data, np.float16), 32, 16, 1)[:, :, 0].T, p.addend)
  t = f16.ew_armed_erdma_disabled(p)
  assert f16regs(t)["DPU_RDMA_ERDMA_CFG"] == 1 and f16regs(t)["DPU_EW_CFG"] == 0x108202C0

def test_trap_streams():
  rng = np.random.default_rng(2)
  p = f16.MatmulProblem(rng.standard_normal((8, 32)), rng.standard_normal((16, 32)))
  t = f16.mrdma_trap(f16.build_matmul_fp16(p))
  r = f16regs(t)
  assert r["DPU_RDMA_FEATURE_MODE_CFG"] & (1 << 4) == 0 and (r["DPU_RDMA_FEATURE_MODE_CFG"] >> 8) & 7 == 0
  assert t.tasks(IOVAS)[0][-1] == CONV_OP_EN and r["DPU_FEATURE_MODE_CFG"] & 1 == 0
  m = f16.mtx_list_with_rdma_enabled(p)
  assert len(m.task_regs[0]) == 108 and m.tasks(IOVAS)[0][-1] == CONV_OP_EN

CONV_CASES = [dict(IC=3, IH=7, IW=5, OC=10, KH=3, KW=3, stride=(1, 1), pad=(1, 1)),
              dict(IC=40, IH=9, IW=6, OC=20, KH=3, KW=2, stride=(2, 1), pad=(1, 0)),
              dict(IC=32, IH=2, IW=9, OC=16, KH=1, KW=3, stride=(1, 2), pad=(0, 1)),
              dict(IC=8, IH=11, IW=10, OC=5, KH=3, KW=3, stride=(1, 1), pad=(2, 2), dilation=(2, 2)),
              dict(IC=64, IH=6, IW=7, OC=64, KH=3, KW=3, stride=(2, 2), pad=(1, 1), depthwise=True),
              dict(IC=20, IH=5, IW=8, OC=20, KH=5, KW=3, stride=(1, 1), pad=(2, 1), depthwise=True)]

def conv_problem(rng, IC, IH, IW, OC, KH, KW, stride=(1, 1), pad=(0, 0), dilation=(1, 1), depthwise=False, out_fp16=True):
  x = rng.uniform(-1, 1, (IC, IH, IW))
  w = rng.uniform(-1, 1, (IC, KH, KW) if depthwise else (OC, IC, KH, KW))
  return f16.Fp16ConvProblem(x, w, stride, pad, dilation, depthwise, out_fp16)

@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c['IC']}x{c['IH']}x{c['IW']}k{c['KH']}{c['KW']}{'dw' if c.get('depthwise') else ''}")
@pytest.mark.parametrize("out_fp16", [True, False])
def test_gn_conv2d_registers_and_layouts(case, out_fp16):
  if case.get("depthwise") and not out_fp16:
    with pytest.raises(AssertionError, match="depthwise fp32"): conv_problem(np.random.default_rng(3), **case, out_fp16=False)
    return
  rng = np.random.default_rng(3)
  p = conv_problem(rng, **case, out_fp16=out_fp16)
  s = f16.build_conv2d_fp16(p)
  w = s.tasks(IOVAS)[0]
  assert len(w) == 126 and w[-2] == MARKER and w[-1] == CONV_OP_EN and w[-4] == 0
  r = f16regs(s)
  dw = p.depthwise
  IC, IH, OC = p.ICp, p.IHj, p.OCp
  sy, sx = p.stride
  dy, dx = p.dilation
  assert IC % 32 == 0 and (OC % 16 == 0) and IH >= 4
  assert r["CNA_CONV_CON1"] == (0x123 if dw else 0x120) and r["CORE_MISC_CFG"] == (0x203 if dw else 0x201)
  assert r["CNA_CONV_CON2"] == ((50 + sy + 1) if dw else IH + 1) << 4
  assert r["CNA_CONV_CON3"] == (dy - 1) << 21 | (dx - 1) << 16 | sy << 3 | sx
  assert r["CNA_DATA_SIZE0"] == p.IW << 16 | IH and r["CNA_DATA_SIZE1"] == (IC - 1) << 16 | IC
  assert r["CNA_DATA_SIZE2"] == p.OW and r["CNA_DATA_SIZE3"] == p.OW * p.OH
  kern = 1 if dw else OC
  assert r["CNA_WEIGHT_SIZE1"] == 2 * p.KW * p.KH * IC and r["CNA_WEIGHT_SIZE2"] == p.KW << 24 | p.KH << 16 | kern
  assert r["CNA_WEIGHT_SIZE0"] == 2 * p.KW * p.KH * IC * (1 if dw else OC)
  fd = -(-(p.IW * IH * IC * 2) // 32768)
  assert r["CNA_CBUF_CON0"] == (12 - fd) << 4 | fd and r["CNA_CBUF_CON1"] == -(-(p.IW * IC) // 32)
  assert r["CNA_PAD_CON0"] == p.pad[1] << 4 | p.pad[0] and r["CNA_PAD_CON1"] == 0
  assert r["CNA_DMA_CON1"] == 4 * p.IW and r["CNA_DMA_CON2"] == p.IW * (IH - 4)
  assert r["CORE_DATAOUT_SIZE_0"] == (p.OH - 1) << 16 | (p.OW - 1) and r["CORE_DATAOUT_SIZE_1"] == OC - 1
  assert r["DPU_FEATURE_MODE_CFG"] == (0x1FC if dw else 0x1E4)
  assert r["DPU_DATA_FORMAT"] == (0x48000002 if out_fp16 else 0xA8000002)
  assert r["DPU_DST_SURF_STRIDE"] == p.OH * p.OW << 4 and r["DPU_DATA_CUBE_CHANNEL"] == (OC - 1) << 16 | (OC - 1)
  assert r["DPU_BS_OW_CFG"] == (0x36C if dw else (0x126 if out_fp16 else 0x36E))
  assert r["DPU_BS_OW_OP"] == (0x80 if dw else 0)
  assert r["DPU_SURFACE_ADD"] == p.OH * p.OW * (2 if out_fp16 else 4) * (2 if dw else 1) << 4
  assert r["DPU_OUT_CVT_SCALE"] == (0x10001 if out_fp16 else 1)
  assert r["DPU_RDMA_FEATURE_MODE_CFG"] == 0x7810 | (8 if out_fp16 else 0) | (6 if dw else 0)
  # layouts invert
  x = np.frombuffer(s.buffers["input"].data, np.float16)
  assert np.array_equal(f16.unpack_feature(x, p.IC, p.IH, p.IW, height=IH), p.input)
  assert np.all(f16.unpack_feature(x, IC, IH, p.IW, height=IH)[p.IC:] == 0)
  wt = np.frombuffer(s.buffers["weights"].data, np.float16)
  if dw: back = f16.unpack_weights_dw(wt, p.IC, p.KH, p.KW, 32, IC)
  else: back = f16.unpack_weights_grouped(wt, p.OC, p.IC, p.KH, p.KW, 16, 32, OC, IC)
  assert np.array_equal(back, p.weights)
  out = rng.uniform(-1, 1, (p.OC, p.OH, p.OW)).astype(np.float16 if out_fp16 else np.float32)
  c2 = 8 if out_fp16 else 4
  raw = f16.pack_feature(out, "fp16" if out_fp16 else "fp32", channels=OC)
  assert raw.nbytes == s.buffers["output"].size
  assert np.array_equal(s.decode(raw.tobytes()), out.astype(np.float32))
  assert f16.feature_index(p.OC - 1, p.OH - 1, p.OW - 1, p.OH, p.OW, c2) < raw.size

def test_fp16_weight_layouts_match_the_published_index_functions():
  """weight_conv_fp16 / weight_fp16 (mtx512) / weight_conv_dw_fp16, re-derived as closed forms, against the packers;
  K >= 2*KG so the layout is actually exercised (GN's trap: at K <= KG every grouping gives the same bytes)."""
  rng = np.random.default_rng(4)
  OC, IC, KH, KW = 40, 96, 3, 2
  w = rng.standard_normal((OC, IC, KH, KW)).astype(np.float16)
  OCp, ICp = 48, 96
  flat = f16.pack_weights_grouped(w, 16, 32, OCp, ICp)
  for oc, ic, kh, kw in [(0, 0, 0, 0), (17, 33, 2, 1), (39, 95, 1, 0), (20, 64, 0, 1)]:
    assert flat[f16.weight_index(oc, ic, kh, kw, ICp, KH, KW, 16, 32)] == w[oc, ic, kh, kw]
    idx = ((((oc // 16) * (ICp // 32) + ic // 32) * KH + kh) * KW + kw) * 16 * 32 + (oc % 16) * 32 + ic % 32
    assert flat[idx] == w[oc, ic, kh, kw]
  m = f16.pack_weights_grouped(w[:, :, :1, :1], 16, 32, OCp, ICp)   # 1x1: mtx512 weight_fp16(C=K, k, c), 1-based
  for n, k in [(0, 0), (17, 33), (39, 95), (5, 64)]:
    kk, cc = n + 1, k + 1
    mtx = ((cc - 1) // 32 * 32) * 16 + ((kk - 1) // 16) * 16 * ICp + (cc - 1) % 32 + ((kk - 1) % 16) * 32
    assert m[mtx] == w[n, k, 0, 0]
  wd = rng.standard_normal((64, 3, 3)).astype(np.float16)
  fd = f16.pack_weights_dw(wd, 32, 64)
  for c, kh, kw in [(0, 0, 0), (33, 2, 1), (63, 1, 2)]:
    assert fd[f16.dw_weight_index(c, kh, kw, 3, 3, 32)] == wd[c, kh, kw]
  x = rng.standard_normal((20, 3, 5)).astype(np.float16)
  fx = f16.pack_feature(x, "fp16", channels=32)
  for c, h, ww in [(0, 0, 0), (9, 2, 4), (19, 1, 3)]:
    assert fx[f16.feature_index(c, h, ww, 3, 5, 8)] == x[c, h, ww]
    byte = ((c // 8) * 3 * 5 + h * 5 + ww) * 16 + (c % 8) * 2     # byte_off = (c/C2)*H*W*16 + (h*W+w)*16 + (c%C2)*2
    assert fx.tobytes()[byte:byte + 2] == x[c, h, ww].tobytes()
  assert [f16.feature_c2(t) for t in ("int4", "int8", "fp16", "bf16", "int16", "tf32", "fp32")] == [32, 16, 8, 8, 8, 4, 4]

def test_gn_matmul_layout_and_decode():
  rng = np.random.default_rng(5)
  p = f16.MatmulProblem(rng.standard_normal((10, 40)), rng.standard_normal((20, 40)), out_fp16=False)
  assert (p.Mp, p.Kp, p.Np) == (12, 64, 32)
  s = f16.build_matmul_fp16(p)
  a = np.frombuffer(s.buffers["input"].data, np.float16)
  assert a.size == 12 * 64
  for m, k in [(0, 0), (9, 39), (3, 17)]: assert a[(k // 8) * 12 * 8 + m * 8 + k % 8] == p.a[m, k]
  out = rng.standard_normal((10, 20)).astype(np.float32)
  raw = np.zeros(32 * 12, np.float32)
  for m in range(10):
    for n in range(20): raw[(n // 4) * 12 * 4 + m * 4 + n % 4] = out[m, n]
  assert np.array_equal(s.decode(raw.tobytes()), out)
  with pytest.raises(ValueError): f16.build_matmul_fp16(f16.MatmulProblem(np.zeros((512, 512)), np.zeros((16, 512))))
