"""Makes broken safetensors files for moe-run's bad-input tests.

Works on the raw bytes (header JSON + data) so that it can produce files the
well-behaved writer in scripts/moe_reference.py never would."""
import json
import math
import struct
import sys


def load(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), bytearray(blob[8 + n:])


def save(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + bytes(data))


def main(op, src, out, *args):
    if op == "truncate":  # drop the last N bytes
        blob = open(src, "rb").read()
        open(out, "wb").write(blob[:len(blob) - int(args[0])])
        return
    header, data = load(src)
    if op == "drop":
        del header[args[0]]
    elif op == "add":
        header[args[0]] = {"dtype": "F32", "shape": [1],
                           "data_offsets": [len(data), len(data) + 4]}
        data += struct.pack("<f", 1.0)
    elif op == "reshape":  # same bytes, shape [N] instead of its real shape
        info = header[args[0]]
        info["shape"] = [math.prod(info["shape"])]
    elif op == "nan":  # first element of hidden_states becomes NaN
        begin = header["hidden_states"]["data_offsets"][0]
        data[begin:begin + 4] = struct.pack("<f", float("nan"))
    else:
        sys.exit(f"unknown operation {op}")
    save(out, header, data)


if __name__ == "__main__":
    main(*sys.argv[1:])
