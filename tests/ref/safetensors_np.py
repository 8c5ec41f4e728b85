"""Pure-numpy safetensors reader and writer (no torch, no `safetensors` package).

Format (the public safetensors spec, docs/GLM.md §2.2):
    8 bytes   little-endian u64 N = length of the JSON header
    N bytes   JSON object: name -> {"dtype": "BF16"|"F16"|"F32"|..., "shape": [...],
                                    "data_offsets": [begin, end)}  (relative to the data area)
              plus an optional "__metadata__": {str: str}
    rest      raw little-endian tensor bytes

Reading decodes BF16 exactly (uint16 << 16 viewed as float32), F16 and F32 to float32.
Writing rounds float32 to BF16 with round-to-nearest-even (what torch's .to(torch.bfloat16) does).

Also: `load_checkpoint_dir(path)` -> (config dict, TensorStore) for a Hugging Face model directory,
single file (`model.safetensors`) or sharded (`model.safetensors.index.json` + shards).
"""

import json
import os
import struct

import numpy as np

__all__ = [
    "SafetensorsFile", "TensorStore", "load_checkpoint_dir", "write_safetensors",
    "f32_to_bf16_bits", "bf16_bits_to_f32", "bf16_round",
]

# dtype name -> (numpy storage dtype, bytes per element)
_DTYPES = {
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "F32": (np.dtype("<f4"), 4),
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}


def bf16_bits_to_f32(bits):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> uint16 bf16 bit patterns, round to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = x.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_round(x):
    """Round values to the nearest bf16 and return them as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


class SafetensorsFile:
    """One .safetensors file, memory-mapped; tensors are decoded on request."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{path}: file shorter than 8 bytes")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 * 1024 * 1024:
                raise ValueError(f"{path}: header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
        self.metadata = header.pop("__metadata__", None)
        self.header = header
        self.data_start = 8 + n
        data_len = size - self.data_start
        for name, info in header.items():
            dt = info["dtype"]
            if dt not in _DTYPES:
                raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
            b, e = info["data_offsets"]
            nel = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
            if not (0 <= b <= e <= data_len) or e - b != nel * _DTYPES[dt][1]:
                raise ValueError(f"{path}: tensor {name}: bad data_offsets {b},{e} "
                                 f"for shape {info['shape']} {dt} (data area {data_len} bytes)")
        self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else None

    def keys(self):
        return list(self.header.keys())

    def info(self, name):
        return self.header[name]

    def raw(self, name):
        """The stored array (BF16 as uint16 bit patterns), without copying."""
        info = self.header[name]
        st, _ = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        buf = self._mm[self.data_start + b:self.data_start + e]
        return buf.view(st).reshape(info["shape"])

    def get(self, name, dtype=np.float32):
        """The tensor decoded to `dtype` (float32 by default)."""
        info = self.header[name]
        arr = self.raw(name)
        if info["dtype"] == "BF16":
            arr = bf16_bits_to_f32(arr)
        return np.array(arr, dtype=dtype, copy=True)


class TensorStore:
    """Name -> tensor over one or many safetensors files (a sharded checkpoint)."""

    def __init__(self, files_by_name):
        self._where = files_by_name  # name -> SafetensorsFile

    def __contains__(self, name):
        return name in self._where

    def keys(self):
        return list(self._where.keys())

    def info(self, name):
        return self._where[name].info(name)

    def get(self, name, dtype=np.float32):
        if name not in self._where:
            raise KeyError(f"tensor {name} not found in the checkpoint")
        return self._where[name].get(name, dtype)

    def raw(self, name):
        return self._where[name].raw(name)


def load_checkpoint_dir(path):
    """(config dict, TensorStore) of a Hugging Face model directory (single file or sharded)."""
    with open(os.path.join(path, "config.json"), "r", encoding="utf-8") as f:
        config = json.load(f)
    index_path = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    where = {}
    if os.path.exists(index_path):
        with open(index_path, "r", encoding="utf-8") as f:
            index = json.load(f)
        opened = {}
        for name, shard in index["weight_map"].items():
            if shard not in opened:
                opened[shard] = SafetensorsFile(os.path.join(path, shard))
            if name not in opened[shard].header:
                raise ValueError(f"{path}: index maps {name} to {shard}, which does not hold it")
            where[name] = opened[shard]
    elif os.path.exists(single):
        st = SafetensorsFile(single)
        for name in st.keys():
            where[name] = st
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    return config, TensorStore(where)


def write_safetensors(path, tensors, metadata=None, align=8):
    """Write `tensors` (list of (name, dtype_name, array) or dict name -> (dtype_name, array)) to `path`.

    dtype_name is "BF16" (array: float values, rounded to nearest even; or uint16 bit patterns),
    "F16" or "F32". Tensors are stored in the order given, contiguously; the JSON header is padded
    with spaces so that the data area starts at a multiple of `align` bytes (as the safetensors
    library does). Returns the number of tensor data bytes written.
    """
    if isinstance(tensors, dict):
        items = [(name, dt, arr) for name, (dt, arr) in tensors.items()]
    else:
        items = list(tensors)
    norm = []
    for name, dt, arr in items:
        arr = np.asarray(arr)
        if dt == "BF16":
            data = arr if arr.dtype == np.uint16 else f32_to_bf16_bits(arr.astype(np.float32))
            data = data.astype("<u2")
        elif dt == "F16":
            data = arr.astype("<f2")
        elif dt == "F32":
            data = arr.astype("<f4")
        else:
            raise ValueError(f"write_safetensors: unsupported dtype {dt}")
        norm.append((name, dt, list(arr.shape), np.ascontiguousarray(data).tobytes()))
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for name, dt, shape, blob in norm:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(8 + len(hjson))) % align
    hjson += b" " * pad
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for _, _, _, blob in norm:
            f.write(blob)
    os.replace(tmp, path)
    return off
