"""Independent GGUF v3 reader for the golden reference: metadata, tensor infos and
dequantisation of F32, F16, BF16 and Q8_0 into float64 NumPy arrays.

Written from the GGUF specification, not from the engine's reader, so that the two
can disagree. Every field read from the file is validated before use; bad input
raises GGUFError with a message naming the key or tensor.
"""

import os
import struct

import numpy as np

import kquants

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# Limits on what a file may claim, so that a corrupt count fails cleanly instead of
# exhausting memory. They are far above anything the test models use.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_ARRAY_LEN = 1 << 28
MAX_DIMS = 4

# Metadata value types (GGUF specification).
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, \
    T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(13)

_SCALAR_FMT = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
    T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<B",
    T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}
_SCALAR_NP = {
    T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2",
    T_UINT32: "<u4", T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: "<u1",
    T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8",
}

# ggml tensor types this reader dequantises: id -> (name, block elements, block bytes).
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
TENSOR_TYPES = {
    GGML_F32: ("F32", 1, 4),
    GGML_F16: ("F16", 1, 2),
    GGML_Q8_0: ("Q8_0", 32, 34),
    GGML_BF16: ("BF16", 1, 2),
}
TENSOR_TYPES.update(kquants.KQUANT_TYPES)  # Q4_0, Q2_K..Q6_K: decoded by kquants.py

_Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])


class GGUFError(Exception):
    """A GGUF file is malformed or uses something this reader does not support."""


class TensorInfo:
    """One tensor's header: name, ne (ne[0] is the contiguous row), type, data offset."""

    def __init__(self, name, ne, ggml_type, offset):
        self.name = name
        self.ne = tuple(ne)
        self.ggml_type = ggml_type
        self.offset = offset          # relative to the start of the data section
        self.n_elements = 1
        for n in self.ne:
            self.n_elements *= n
        _, blk, blk_bytes = TENSOR_TYPES[ggml_type]
        self.n_bytes = self.n_elements // blk * blk_bytes

    @property
    def type_name(self):
        return TENSOR_TYPES[self.ggml_type][0]

    @property
    def shape(self):
        """NumPy shape of the dequantised array: (ne[n-1], ..., ne[0])."""
        return tuple(reversed(self.ne))


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError("truncated file while reading %s (need %d bytes at offset %d, "
                            "file has %d)" % (what, n, self.pos, len(self.buf)))
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def scalar(self, vtype, what):
        fmt = _SCALAR_FMT[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what):
        return self.scalar(T_UINT32, what)

    def u64(self, what):
        return self.scalar(T_UINT64, what)

    def string(self, what):
        n = self.u64(what + " length")
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError("%s is not valid UTF-8: %s" % (what, e)) from None


class GGUFFile:
    """A parsed GGUF file. metadata: dict key -> value (arrays as lists, or NumPy arrays
    for numeric arrays); tensors: dict name -> TensorInfo, in file order."""

    def __init__(self, path):
        self.path = path
        try:
            empty = os.path.getsize(path) == 0
            # numpy refuses to map an empty file; an empty array gives "truncated" below.
            self._map = np.zeros(0, np.uint8) if empty else np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise GGUFError("cannot map %s: %s" % (path, e)) from None
        self.metadata = {}
        self.tensors = {}
        cur = _Cursor(memoryview(self._map))
        self._read_header(cur)
        self._read_tensor_infos(cur)
        align = self.alignment
        self.data_offset = (cur.pos + align - 1) // align * align
        self._check_tensor_ranges()

    # --- header and metadata -------------------------------------------------------

    def _read_header(self, cur):
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise GGUFError("%s: not a GGUF file (magic %r)" % (self.path, magic))
        self.version = cur.u32("version")
        if self.version != GGUF_VERSION:
            raise GGUFError("%s: GGUF version %d is not supported (want %d)"
                            % (self.path, self.version, GGUF_VERSION))
        self._n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if self._n_tensors > MAX_TENSORS:
            raise GGUFError("tensor count %d exceeds limit %d" % (self._n_tensors, MAX_TENSORS))
        if n_kv > MAX_KV:
            raise GGUFError("metadata count %d exceeds limit %d" % (n_kv, MAX_KV))
        for i in range(n_kv):
            key = cur.string("metadata key #%d" % i)
            if key in self.metadata:
                raise GGUFError("duplicate metadata key %r" % key)
            vtype = cur.u32("type of %r" % key)
            self.metadata[key] = self._read_value(cur, vtype, key)

    def _read_value(self, cur, vtype, key):
        if vtype in _SCALAR_FMT:
            v = cur.scalar(vtype, "value of %r" % key)
            if vtype == T_BOOL:
                if v > 1:
                    raise GGUFError("metadata %r: bool value %d is not 0 or 1" % (key, v))
                return bool(v)
            return v
        if vtype == T_STRING:
            return cur.string("value of %r" % key)
        if vtype == T_ARRAY:
            return self._read_array(cur, key)
        raise GGUFError("metadata %r: unknown value type %d" % (key, vtype))

    def _read_array(self, cur, key):
        etype = cur.u32("element type of %r" % key)
        n = cur.u64("length of %r" % key)
        if n > MAX_ARRAY_LEN:
            raise GGUFError("metadata %r: array length %d exceeds limit" % (key, n))
        if etype in _SCALAR_NP:
            dt = np.dtype(_SCALAR_NP[etype])
            raw = cur.take(n * dt.itemsize, "array %r" % key)
            arr = np.frombuffer(raw, dtype=dt).copy()
            if etype == T_BOOL:
                if np.any(arr > 1):
                    raise GGUFError("metadata %r: bool array holds a value other than 0/1" % key)
                arr = arr.astype(bool)
            return arr
        if etype == T_STRING:
            return [cur.string("element %d of %r" % (i, key)) for i in range(n)]
        if etype == T_ARRAY:
            return [self._read_array(cur, "%s[%d]" % (key, i)) for i in range(n)]
        raise GGUFError("metadata %r: unknown array element type %d" % (key, etype))

    @property
    def alignment(self):
        a = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1):
            raise GGUFError("general.alignment %r is not a positive power of two" % (a,))
        return a

    # --- tensor infos ----------------------------------------------------------------

    def _read_tensor_infos(self, cur):
        for i in range(self._n_tensors):
            name = cur.string("name of tensor #%d" % i)
            if name in self.tensors:
                raise GGUFError("duplicate tensor name %r" % name)
            n_dims = cur.u32("n_dims of %r" % name)
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError("tensor %r: n_dims %d not in 1..%d" % (name, n_dims, MAX_DIMS))
            ne = [cur.u64("ne[%d] of %r" % (d, name)) for d in range(n_dims)]
            gtype = cur.u32("type of %r" % name)
            offset = cur.u64("offset of %r" % name)
            self._check_tensor_info(name, ne, gtype)
            self.tensors[name] = TensorInfo(name, ne, gtype, offset)

    def _check_tensor_info(self, name, ne, gtype):
        if gtype not in TENSOR_TYPES:
            raise GGUFError("tensor %r: ggml type %d is not supported by the reference "
                            "(F32, F16, BF16, Q8_0, Q4_0, Q2_K-Q6_K only)" % (name, gtype))
        n = 1
        for d, v in enumerate(ne):
            if v == 0:
                raise GGUFError("tensor %r: ne[%d] is 0" % (name, d))
            n *= v
            if n >= 1 << 62:
                raise GGUFError("tensor %r: element count overflows" % name)
        tname, blk, _ = TENSOR_TYPES[gtype]
        if ne[0] % blk:
            raise GGUFError("tensor %r: row length %d is not a multiple of the %s block "
                            "size %d" % (name, ne[0], tname, blk))

    def _check_tensor_ranges(self):
        size = len(self._map)
        for t in self.tensors.values():
            if t.offset % self.alignment:
                raise GGUFError("tensor %r: offset %d is not aligned to %d"
                                % (t.name, t.offset, self.alignment))
            end = self.data_offset + t.offset + t.n_bytes
            if end > size:
                raise GGUFError("tensor %r: data [%d, %d) runs past the end of the file (%d)"
                                % (t.name, self.data_offset + t.offset, end, size))

    # --- access ------------------------------------------------------------------------

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def has_tensor(self, name):
        return name in self.tensors

    def raw(self, name):
        """The tensor's bytes as a read-only uint8 array (no copy)."""
        t = self._info(name)
        start = self.data_offset + t.offset
        return self._map[start:start + t.n_bytes]

    def tensor(self, name):
        """The tensor dequantised to float64, shaped (ne[n-1], ..., ne[0])."""
        t = self._info(name)
        return dequantize(self.raw(name), t.ggml_type, t.n_elements).reshape(t.shape)

    def _info(self, name):
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError("%s: tensor %r not found" % (self.path, name)) from None


def dequantize(raw, ggml_type, n_elements):
    """Decode n_elements values of ggml_type from the bytes in raw into float64."""
    buf = np.asarray(raw, dtype=np.uint8).tobytes()
    if ggml_type == GGML_F32:
        return np.frombuffer(buf, dtype="<f4", count=n_elements).astype(np.float64)
    if ggml_type == GGML_F16:
        return np.frombuffer(buf, dtype="<f2", count=n_elements).astype(np.float64)
    if ggml_type == GGML_BF16:
        # bf16 is the upper half of an IEEE binary32.
        hi = np.frombuffer(buf, dtype="<u2", count=n_elements).astype(np.uint32) << 16
        return hi.view(np.float32).astype(np.float64)
    if ggml_type == GGML_Q8_0:
        blocks = np.frombuffer(buf, dtype=_Q8_0_BLOCK, count=n_elements // 32)
        d = blocks["d"].astype(np.float64)[:, None]
        return (d * blocks["qs"].astype(np.float64)).reshape(-1)
    if ggml_type in kquants.KQUANT_TYPES:
        return kquants.dequantize(buf, ggml_type, n_elements)
    raise GGUFError("ggml type %d is not supported" % ggml_type)
