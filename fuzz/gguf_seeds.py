#!/usr/bin/python3
"""Writes small valid GGUF v3 files into the folder given: every metadata
value type, arrays, a custom alignment and tensors of several types, each
a few hundred bytes, as seeds for fuzz_gguf (written at run time so that
no binary is committed). Format: the GGUF v3 specification."""
import struct
import sys

VT = dict(u8=0, i8=1, u16=2, i16=3, u32=4, i32=5, f32=6, bool=7, str=8, arr=9, u64=10, i64=11, f64=12)
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml type: (block elements, block bytes)
TYPES = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q8_0": (8, 32, 34), "bf16": (30, 1, 2), "q4_k": (12, 256, 144)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == VT["str"]:
        return gstr(v)
    if t == VT["arr"]:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(value(et, x) for x in items)
    return struct.pack(FMT[t], v)


def gguf(kvs, tensors, align=32):
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        head += gstr(k) + struct.pack("<I", t) + value(t, v)
    data, infos = b"", b""
    for name, tname, dims in tensors:
        tid, blk, bb = TYPES[tname]
        n = 1
        for d in dims:
            n *= d
        data += b"\0" * (-len(data) % align)
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, len(data))
        data += bytes((i * 7 + 1) & 0x3f for i in range(n // blk * bb))
    out = head + infos
    out += b"\0" * (-len(out) % align)
    return out + data


def main(folder):
    every = [("general.architecture", VT["str"], "llama"), ("u8", VT["u8"], 7), ("i8", VT["i8"], -7),
             ("u16", VT["u16"], 700), ("i16", VT["i16"], -700), ("u32", VT["u32"], 70000),
             ("i32", VT["i32"], -70000), ("f32", VT["f32"], 1.5), ("bool", VT["bool"], True),
             ("u64", VT["u64"], 1 << 40), ("i64", VT["i64"], -(1 << 40)), ("f64", VT["f64"], 2.25),
             ("arr.u32", VT["arr"], (VT["u32"], [1, 2, 3])), ("arr.str", VT["arr"], (VT["str"], ["a", "bc", ""])),
             ("arr.f32", VT["arr"], (VT["f32"], [0.5, -1.0]))]
    files = {
        "kv-every-type.gguf": gguf(every, []),
        "tensors.gguf": gguf([("general.alignment", VT["u32"], 64)],
                             [("a.weight", "f32", [4, 2]), ("b.weight", "f16", [8]), ("c.weight", "q8_0", [32, 2]),
                              ("d.weight", "bf16", [2, 2, 2, 2]), ("e.weight", "q4_k", [256])], align=64),
        "tokenizer.gguf": gguf([("tokenizer.ggml.model", VT["str"], "gpt2"),
                                ("tokenizer.ggml.pre", VT["str"], "qwen2"),
                                ("tokenizer.ggml.tokens", VT["arr"], (VT["str"], ["a", "b", "ab", "<s>"])),
                                ("tokenizer.ggml.token_type", VT["arr"], (VT["i32"], [1, 1, 1, 3])),
                                ("tokenizer.ggml.merges", VT["arr"], (VT["str"], ["a b"])),
                                ("tokenizer.ggml.bos_token_id", VT["u32"], 3)], []),
        "empty.gguf": gguf([], []),
    }
    for name, blob in files.items():
        with open(f"{folder}/{name}", "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main(sys.argv[1])
