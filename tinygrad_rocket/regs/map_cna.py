"""CNA (convolution DMA, CBUF, input convert, padding, weight DMA) registers, 0x1000-0x1184.

Sources: Mesa registers.xml domain CNA (offsets, bit ranges); rocket_hw.md §4.1 (meanings, Mesa values);
rocket_fp16_ew_ppu.md §1.5/§2 (fp16 use, HW sweeps). Target 0x0201.
"""
from __future__ import annotations
from tinygrad_rocket.regs.fields import Field, Register, register, whole
from tinygrad_rocket.regs.map_common import block_header
from tinygrad_rocket.regs.values import PRECISION, CONV_MODE, CVT_ORDER

def R(name:str, offset:int, *fields:Field, doc:str="") -> Register: return register("CNA", name, offset, *fields, doc=doc)

REGISTERS: tuple[Register, ...] = block_header("CNA", 0x1000) + (
  R("CONV_CON1", 0x100C,
    Field("NONALIGN_DMA", 30), Field("GROUP_LINE_OFF", 29), Field("DECONV", 16),
    Field("ARGB_IN", 12, 4, doc="pixel (NHWC) input: 8=1ch 9=2ch 10=3ch 11=4ch; 0 = packed NC1HWC2"),
    Field("PROC_PRECISION", 7, 3, values=PRECISION), Field("IN_PRECISION", 4, 3, values=PRECISION),
    Field("CONV_MODE", 0, 4, values=CONV_MODE),
    doc="Mesa: 0 (C==1: 0x60008000), |3 if depthwise; fp16: 0x120"),
  R("CONV_CON2", 0x1010,
    Field("KERNEL_GROUP", 16, 8, doc="TRM: kernels/32-1; Mesa writes 0"),
    Field("FEATURE_GRAINS", 4, 10, doc="Mesa: 50+stride+1 (magic); GN: IH+1 (matmul M+1); TRM: y_stride+kernel_h+1"),
    Field("CSC_WO_EN", 2), Field("CSC_DO_EN", 1), Field("CMD_FIFO_SRST", 0)),
  R("CONV_CON3", 0x1014,
    Field("NN_MODE", 28, 3, doc="multi-core co-work; 0 = single core"),
    Field("ATROUS_Y_DILATION", 21, 5, doc="dilation-1 (GN, HW)"), Field("ATROUS_X_DILATION", 16, 5, doc="dilation-1"),
    Field("DECONV_Y_STRIDE", 11, 3), Field("DECONV_X_STRIDE", 8, 3),
    Field("CONV_Y_STRIDE", 3, 3), Field("CONV_X_STRIDE", 0, 3)),
  R("DATA_SIZE0", 0x1020, Field("DATAIN_WIDTH", 16, 11), Field("DATAIN_HEIGHT", 0, 11),
    doc="raw counts; Mesa puts TFLite H in WIDTH (square shapes only, rocket_hw.md §5.1)"),
  R("DATA_SIZE1", 0x1024, Field("DATAIN_CHANNEL_REAL", 16, 14, doc="channels-1"),
    Field("DATAIN_CHANNEL", 0, 16, doc="aligned channel count")),
  R("DATA_SIZE2", 0x1028, Field("DATAOUT_WIDTH", 0, 11)),
  R("DATA_SIZE3", 0x102C, Field("SURF_MODE", 22, 2), Field("DATAOUT_ATOMICS", 0, 22, doc="out_w*out_h")),
  R("WEIGHT_SIZE0", 0x1030, whole("WEIGHT_BYTES")),
  R("WEIGHT_SIZE1", 0x1034, Field("WEIGHT_BYTES_PER_KERNEL", 0, 19)),
  R("WEIGHT_SIZE2", 0x1038, Field("WEIGHT_WIDTH", 24, 5), Field("WEIGHT_HEIGHT", 16, 5), Field("WEIGHT_KERNELS", 0, 14)),
  R("CBUF_CON0", 0x1040,
    Field("WEIGHT_REUSE", 13), Field("DATA_REUSE", 12),
    Field("FC_DATA_BANK", 8, 3, doc="must be 0 (GN: 1..7 corrupts conv/matmul)"),
    Field("WEIGHT_BANK", 4, 4), Field("DATA_BANK", 0, 4),
    doc="Mesa: DATA_BANK+WEIGHT_BANK = 12 banks of 32 KiB. Uncertain: the TRM describes an 8-bank, minus-one "
        "encoding instead; we reproduce Mesa's values (rocket_hw.md §4.1)"),
  R("CBUF_CON1", 0x1044, Field("DATA_ENTRIES", 0, 14, doc="CBUF entries per feature row; dtype-dependent (GN)")),
  R("CVT_CON0", 0x104C,
    Field("CVT_TRUNCATE_3", 22, 6), Field("CVT_TRUNCATE_2", 16, 6), Field("CVT_TRUNCATE_1", 10, 6),
    Field("CVT_TRUNCATE_0", 4, 6), Field("DATA_SIGN", 3), Field("ROUND_TYPE", 2),
    Field("CVT_TYPE", 1, values=CVT_ORDER), Field("CVT_BYPASS", 0),
    doc="Mesa normal path 0xB (DATA_SIGN|CVT_TYPE|CVT_BYPASS)"),
  *(R(f"CVT_CON{k + 1}", 0x1050 + 4 * k, Field(f"CVT_SCALE{k}", 16, 16),
      Field(f"CVT_OFFSET{k}", 0, 16, signed=True, doc="Mesa C==1 path: 0xFF80 = -128"))
    for k in range(4)),
  R("FC_CON0", 0x1060, Field("FC_SKIP_DATA", 16, 16), Field("FC_SKIP_EN", 0)),
  R("FC_CON1", 0x1064, Field("DATA_OFFSET", 0, 17)),
  R("PAD_CON0", 0x1068, Field("PAD_LEFT", 4, 4), Field("PAD_TOP", 0, 4),
    doc="right/bottom padding are implied by the output size"),
  R("FEATURE_DATA_ADDR", 0x1070, whole("FEATURE_BASE_ADDR", address=True, hex=True), doc="input feature IOVA"),
  R("FC_CON2", 0x1074, Field("WEIGHT_OFFSET", 0, 17)),
  R("DMA_CON0", 0x1078, Field("OV4K_BYPASS", 31),
    Field("WEIGHT_BURST_LEN", 16, 4, doc="3/7/15 = burst 4/8/16"), Field("DATA_BURST_LEN", 0, 4),
    doc="Mesa 0x000F000F"),
  R("DMA_CON1", 0x107C, Field("LINE_STRIDE", 0, 28, doc="4*W for packed features (units uncertain, rocket_hw.md §4.1)")),
  R("DMA_CON2", 0x1080, Field("SURF_STRIDE", 0, 28, doc="W*(H-4) for packed features (units uncertain)")),
  R("FC_DATA_SIZE0", 0x1084, Field("DMA_WIDTH", 16, 14), Field("DMA_HEIGHT", 0, 11)),
  R("FC_DATA_SIZE1", 0x1088, Field("DMA_CHANNEL", 0, 16)),
  R("CLK_GATE", 0x1090, Field("CBUF_CS_DISABLE_CLKGATE", 4), Field("CSC_DISABLE_CLKGATE", 2),
    Field("CNA_WEIGHT_DISABLE_CLKGATE", 1), Field("CNA_FEATURE_DISABLE_CLKGATE", 0), doc="not written by Mesa"),
  R("DCOMP_CTRL", 0x1100, Field("WT_DEC_BYPASS", 3), Field("DECOMP_CONTROL", 0, 3), doc="weight decompression; Mesa 0"),
  R("DCOMP_REGNUM", 0x1104, whole("DCOMP_REGNUM")),
  R("DCOMP_ADDR0", 0x1110, whole("DECOMPRESS_ADDR0", address=True, hex=True), doc="weights IOVA (the weight base address)"),
  *(R(f"DCOMP_AMOUNT{k}", 0x1140 + 4 * k, whole(f"DCOMP_AMOUNT{k}")) for k in range(16)),
  R("CVT_CON5", 0x1180, whole("PER_CHANNEL_CVT_EN", hex=True, doc="one bit per channel; Mesa C==1 path 0xFFFF")),
  R("PAD_CON1", 0x1184, whole("PAD_VALUE", signed=True, doc="Mesa: zi-0x80; how many bits the HW uses is uncertain "
                                                              "(the low byte matters for int8)")),
)
