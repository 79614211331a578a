"""A GGUF requantized to another type with gguf-py's own reference quantizer (what llama-quantize
--allow-requantize does, without building llama.cpp): metadata copied, every matrix dequantized
and quantized again, 1-D tensors kept."""
from __future__ import annotations

import numpy as np


def requantize(src: str, dst: str, qtype: str = "Q8_0", file_type: int = 7) -> str:
    import gguf
    from gguf.quants import dequantize, quantize
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub)
    w.add_file_type(file_type)
    target = gguf.GGMLQuantizationType[qtype]
    out = []
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # numpy order
        if len(shape) == 1 or t.tensor_type == gguf.GGMLQuantizationType.F32:
            out.append((t.name, np.array(t.data), None))
            continue
        f = dequantize(np.array(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        out.append((t.name, quantize(f, target), target))
    for name, data, raw in out:
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
