#!/usr/bin/env python3
"""Minimal pure-Python safetensors reader (struct + json + torch.frombuffer), for checking by hand that files
written by tessera load in PyTorch where the `safetensors` package is not installed. Run with /usr/bin/python3.

    /usr/bin/python3 tools/reference/read_safetensors.py FILE [--values]
"""
import json
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def load(path):
    """Return (tensors: dict name -> torch.Tensor, metadata: dict). Checks the offsets tile the buffer."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    buf = memoryview(data)[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors, cursor = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = e["data_offsets"]
        assert begin == cursor, f"{name}: gap or overlap at {begin} (expected {cursor})"
        cursor = end
        dtype, shape = DTYPES[e["dtype"]], e["shape"]
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:  # clone: the buffer may be unaligned and is read-only
            tensors[name] = torch.frombuffer(bytearray(buf[begin:end]), dtype=dtype).reshape(shape).clone()
        assert tensors[name].numel() * tensors[name].element_size() == end - begin, name
    assert cursor == len(buf), f"{len(buf) - cursor} trailing bytes"
    return tensors, meta


if __name__ == "__main__":
    ts, md = load(sys.argv[1])
    print("metadata:", md)
    for k, t in ts.items():
        print(k, t.dtype, list(t.shape), t.tolist() if "--values" in sys.argv else "")
