"""Update compression for the shared arrays sent up (`compression = "fp16" | "int8"`).

The client sends its update Δ = w_new − w_sent instead of w_new: fp16 casts Δ; int8 quantises
each tensor symmetrically (scale = max|Δ| / 127, so the error per value is at most scale / 2).
Scales travel in a `compression` ConfigRecord. The server decompresses (w_sent + Δ̂) before
validating and aggregating, so strategies see ordinary float32 arrays.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

COMPRESSIONS = ("none", "fp16", "int8")
RECORD = "compression"


def compress(new: ArrayRecord, sent: ArrayRecord, method: str) -> tuple[ArrayRecord, ConfigRecord]:
    """The compressed update and its side information (method and per-tensor scales)."""
    out, info = {}, {"method": method}
    for key, array in new.items():
        delta = array.numpy().astype(np.float32) - sent[key].numpy().astype(np.float32)
        if method == "fp16":
            out[key] = Array(delta.astype(np.float16))
        elif method == "int8":
            peak = float(np.abs(delta).max()) if delta.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            out[key] = Array(np.clip(np.rint(delta / scale), -127, 127).astype(np.int8))
            info[f"scale/{key}"] = scale
        else:
            raise ValueError(f"compression '{method}' is unknown; valid: {list(COMPRESSIONS)}")
    return ArrayRecord(out), ConfigRecord(info)


def decompress(compressed: ArrayRecord, info: ConfigRecord, sent: ArrayRecord) -> ArrayRecord:
    """w_sent + Δ̂ in the dtype of what was sent."""
    method = str(info["method"])
    out = {}
    for key, array in compressed.items():
        if key not in sent:
            raise ValueError(f"compressed key '{key}' was not sent")
        delta = array.numpy().astype(np.float32)
        if method == "int8":
            delta = delta * float(info[f"scale/{key}"])
        ref = sent[key].numpy()
        if delta.shape != ref.shape:
            raise ValueError(f"'{key}' has shape {list(delta.shape)}, sent {list(ref.shape)}")
        out[key] = Array((ref.astype(np.float32) + delta).astype(ref.dtype))
    return ArrayRecord(out)


def decompress_reply(content: RecordDict, sent: ArrayRecord) -> str | None:
    """Replace a compressed `arrays` record in place; the reason when it cannot be read."""
    info = content.config_records.get(RECORD)
    if info is None or "arrays" not in content.array_records:
        return None
    try:
        content.array_records["arrays"] = decompress(content["arrays"], info, sent)
    except (KeyError, ValueError) as err:
        return f"compressed update unreadable: {err}"
    del content.config_records[RECORD]
    return None
