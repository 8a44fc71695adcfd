"""Dequantisation of ggml's Q4_0 and k-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) into
float64 NumPy arrays, written from the block layouts of ggml-common.h for the golden
reference, independently of the engine's C kernels.

Each decoder takes the raw bytes of whole blocks and returns the values in row order.
"""

import numpy as np

QK_K = 256

GGML_Q4_0, GGML_Q2_K, GGML_Q3_K, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K = 2, 10, 11, 12, 13, 14

# id -> (name, block elements, block bytes)
KQUANT_TYPES = {
    GGML_Q4_0: ("Q4_0", 32, 18),
    GGML_Q2_K: ("Q2_K", QK_K, 84),
    GGML_Q3_K: ("Q3_K", QK_K, 110),
    GGML_Q4_K: ("Q4_K", QK_K, 144),
    GGML_Q5_K: ("Q5_K", QK_K, 176),
    GGML_Q6_K: ("Q6_K", QK_K, 210),
}

_BLOCKS = {
    GGML_Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", (16,))]),
    GGML_Q2_K: np.dtype([("scales", "u1", (16,)), ("qs", "u1", (64,)), ("d", "<f2"), ("dmin", "<f2")]),
    GGML_Q3_K: np.dtype([("hmask", "u1", (32,)), ("qs", "u1", (64,)), ("scales", "u1", (12,)),
                         ("d", "<f2")]),
    GGML_Q4_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qs", "u1", (128,))]),
    GGML_Q5_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qh", "u1", (32,)),
                         ("qs", "u1", (128,))]),
    GGML_Q6_K: np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)),
                         ("d", "<f2")]),
}
for _t, (_name, _, _size) in KQUANT_TYPES.items():
    assert _BLOCKS[_t].itemsize == _size, _name


def _bits(a, shift, width):
    return (a.astype(np.int64) >> shift) & ((1 << width) - 1)


def _q4_0(b):
    q = b["qs"].astype(np.int64)
    quants = np.concatenate([q & 15, q >> 4], axis=1) - 8            # elements 0-15, then 16-31
    return b["d"].astype(np.float64)[:, None] * quants


def _scale_min_k4(s):
    """(scales, mins) [n, 8] of Q4_K/Q5_K from the 12 packed bytes: sub-blocks 0-3 use
    the low 6 bits of bytes j and j+4; sub-blocks 4-7 the nibbles of byte j+4 plus the
    top two bits of bytes j-4 (scale) and j (min)."""
    s = s.astype(np.int64)
    sc = np.empty((s.shape[0], 8), np.int64)
    mn = np.empty_like(sc)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _nibbles_k4(qs):
    """[n, 256] 4-bit quants: byte 32k+l holds element 64k+l (low) and 64k+32+l (high)."""
    q = qs.astype(np.int64).reshape(-1, 4, 32)
    return np.stack([q & 15, q >> 4], axis=2).reshape(-1, QK_K)


def _q4_k(b):
    sc, mn = _scale_min_k4(b["scales"])
    q = _nibbles_k4(b["qs"])
    d = b["d"].astype(np.float64)[:, None]
    dmin = b["dmin"].astype(np.float64)[:, None]
    return d * np.repeat(sc, 32, axis=1) * q - dmin * np.repeat(mn, 32, axis=1)


def _q5_k(b):
    sc, mn = _scale_min_k4(b["scales"])
    q = _nibbles_k4(b["qs"])
    # fifth bit of element 32j+l is bit j of qh[l]
    hbit = (b["qh"].astype(np.int64)[:, None, :] >> np.arange(8)[None, :, None]) & 1
    q = q + 16 * hbit.reshape(-1, QK_K)
    d = b["d"].astype(np.float64)[:, None]
    dmin = b["dmin"].astype(np.float64)[:, None]
    return d * np.repeat(sc, 32, axis=1) * q - dmin * np.repeat(mn, 32, axis=1)


def _crumbs(qs):
    """[n, 256] 2-bit fields: byte 32h+l holds elements 128h+32j+l in bits 2j..2j+1."""
    q = qs.astype(np.int64).reshape(-1, 2, 1, 32)
    return ((q >> (2 * np.arange(4))[None, None, :, None]) & 3).reshape(-1, QK_K)


def _q2_k(b):
    s = b["scales"].astype(np.int64)                                # one byte per 16 values
    d = b["d"].astype(np.float64)[:, None]
    dmin = b["dmin"].astype(np.float64)[:, None]
    return (d * np.repeat(s & 15, 16, axis=1) * _crumbs(b["qs"])
            - dmin * np.repeat(s >> 4, 16, axis=1))


def _q3_k_scales(s):
    """[n, 16] signed scales: low 4 bits from the nibbles of bytes 0-7 (scales 0-7 low
    nibbles, 8-15 high nibbles), high 2 bits from bytes 8-11 (byte 8 + i%4, bits 2*(i//4))."""
    s = s.astype(np.int64)
    lo = np.concatenate([s[:, 0:8] & 15, s[:, 0:8] >> 4], axis=1)
    i = np.arange(16)
    hi = (s[:, 8 + (i % 4)] >> (2 * (i // 4))) & 3
    return (lo | (hi << 4)) - 32


def _q3_k(b):
    sc = _q3_k_scales(b["scales"])
    low = _crumbs(b["qs"])
    # third bit of element e is bit e//32 of hmask[e%32]; a clear bit subtracts 4
    hbit = (b["hmask"].astype(np.int64)[:, None, :] >> np.arange(8)[None, :, None]) & 1
    q = low + 4 * hbit.reshape(-1, QK_K) - 4
    return b["d"].astype(np.float64)[:, None] * np.repeat(sc, 16, axis=1) * q


def _q6_k(b):
    ql = b["ql"].astype(np.int64).reshape(-1, 2, 2, 32)             # [half][first/second 32 bytes]
    qh = b["qh"].astype(np.int64).reshape(-1, 2, 1, 32)
    low = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh >> (2 * np.arange(4))[None, None, :, None]) & 3      # group g: bits 2g..2g+1
    q = (low | (high << 4)).reshape(-1, QK_K) - 32
    sc = b["scales"].astype(np.int64)
    return b["d"].astype(np.float64)[:, None] * np.repeat(sc, 16, axis=1) * q


_DECODERS = {
    GGML_Q4_0: _q4_0, GGML_Q2_K: _q2_k, GGML_Q3_K: _q3_k,
    GGML_Q4_K: _q4_k, GGML_Q5_K: _q5_k, GGML_Q6_K: _q6_k,
}


def dequantize(buf, ggml_type, n_elements):
    """n_elements values (a whole number of blocks) of ggml_type from bytes buf."""
    _, blk, _ = KQUANT_TYPES[ggml_type]
    blocks = np.frombuffer(buf, dtype=_BLOCKS[ggml_type], count=n_elements // blk)
    return _DECODERS[ggml_type](blocks).reshape(-1)
