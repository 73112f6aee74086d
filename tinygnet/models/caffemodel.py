"""Read a Caffe ``.caffemodel``: the protobuf wire format by hand, for the few fields needed.

A caffemodel is one serialised ``NetParameter`` message (Caffe's
``caffe.proto``). Protobuf's wire format is a flat run of fields, each a
*key* then a *value*::

    key   = varint(field_number << 3 | wire_type)
    value = varint                 (wire type 0: ints, enums, bools)
          | 8 bytes                (wire type 1: fixed64, double)
          | varint(length), bytes  (wire type 2: strings, nested messages, packed arrays)
          | 4 bytes                (wire type 5: fixed32, float)

A varint stores 7 bits per byte, least significant group first; the top bit
of a byte says another byte follows. A nested message is just the bytes of
a length-delimited field, parsed the same way. Fields may come in any order,
and a reader skips the ones it does not know: that is how one reader reads
files of both Caffe formats, and every field of them it does not need.

The fields read here (Caffe's numbers)::

    NetParameter       layers = 2 (V1LayerParameter), layer = 100 (LayerParameter)
    V1LayerParameter   name = 4, type = 5 (an enum), blobs = 6       (files of 2014)
    LayerParameter     name = 1, type = 2 (a string), blobs = 7      (files of 2015 on)
    BlobProto          num, channels, height, width = 1-4 (legacy 4-D shape),
                       data = 5 (packed float32), shape = 7 (BlobShape),
                       double_data = 8 (packed float64)
    BlobShape          dim = 1 (packed int64)

No protobuf library is used. One pass over the file is quick although it is
Python: the bulk of a caffemodel, the weights, are packed float arrays that
``np.frombuffer`` takes whole, not a value at a time (docs/real-googlenet.md
gives the time measured for a 53 MB file).
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

__all__ = ["CaffeLayer", "read_caffemodel", "parse_caffemodel"]

CaffeLayer = namedtuple("CaffeLayer", ["name", "type", "blobs"])
CaffeLayer.__doc__ = """One layer of a caffemodel: its name, its type ("Convolution",
"InnerProduct", ...) and its blobs (float32 NumPy arrays in Caffe's shapes: for a
convolution, the weight out x in x KH x KW then the bias)."""

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType: the numbers of the types a trained GoogLeNet file holds.
V1_LAYER_TYPES = {0: "None", 1: "Accuracy", 3: "Concat", 4: "Convolution", 5: "Data",
                  6: "Dropout", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU",
                  20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split"}


class _WireError(Exception):
    """The bytes are not the messages expected (turned into a ValueError naming the file)."""


def read_caffemodel(path) -> list[CaffeLayer]:
    """The layers of the caffemodel at ``path``, in the file's order.

    Raises ``ValueError`` (one line naming the file) when the bytes are not
    a caffemodel: truncated, random, or another protobuf message.
    """
    with open(path, "rb") as f:
        data = f.read()
    return parse_caffemodel(data, source=str(path))


def parse_caffemodel(data: bytes, source: str = "caffemodel") -> list[CaffeLayer]:
    """The layers of a serialised ``NetParameter`` (``read_caffemodel`` without the file)."""
    try:
        layers = _net_layers(memoryview(data))
    except _WireError as error:
        raise ValueError(f"{source}: not a readable caffemodel ({error})") from None
    if not layers:
        raise ValueError(f"{source}: not a caffemodel (no layers in it; {len(data)} bytes)")
    return layers


# ----------------------------------------------------------------------- the wire format
def _varint(buf, pos):
    """Decode the varint at ``buf[pos]``: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated: the data ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _WireError("a number longer than 10 bytes")


def _fields(buf):
    """Yield ``(field_number, wire_type, value)`` for every field of one message.

    ``value`` is an int for a varint, a memoryview of the bytes otherwise.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
            continue
        if wire == LENGTH_DELIMITED:
            size, pos = _varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
        else:
            raise _WireError(f"wire type {wire} (groups, or bytes of another kind)")
        if pos + size > end:
            raise _WireError(f"truncated: field {number} needs {size} bytes, "
                             f"{end - pos} are left")
        yield number, wire, buf[pos:pos + size]
        pos += size


def _expect(number, wire, expected, message):
    if wire != expected:
        raise _WireError(f"{message} field {number} has wire type {wire}, expected {expected}")


def _text(value, number, wire, message):
    _expect(number, wire, LENGTH_DELIMITED, message)
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _WireError(f"{message} field {number} is not UTF-8 text") from None


# ----------------------------------------------------------------------- Caffe's messages
def _net_layers(buf):
    layers = []
    for number, wire, value in _fields(buf):
        if number == 2:                       # NetParameter.layers: V1LayerParameter
            _expect(number, wire, LENGTH_DELIMITED, "NetParameter")
            layers.append(_layer(value, name_field=4, type_field=5, blobs_field=6, version=1))
        elif number == 100:                   # NetParameter.layer: LayerParameter
            _expect(number, wire, LENGTH_DELIMITED, "NetParameter")
            layers.append(_layer(value, name_field=1, type_field=2, blobs_field=7, version=2))
    return layers


def _layer(buf, name_field, type_field, blobs_field, version):
    message = f"V{version} layer"
    name, kind, blobs = "", "", []
    for number, wire, value in _fields(buf):
        if number == name_field:
            name = _text(value, number, wire, message)
        elif number == type_field and version == 1:
            _expect(number, wire, VARINT, message)
            kind = V1_LAYER_TYPES.get(value, f"V1 type {value}")
        elif number == type_field:
            kind = _text(value, number, wire, message)
        elif number == blobs_field:
            _expect(number, wire, LENGTH_DELIMITED, message)
            try:
                blobs.append(_blob(value))
            except _WireError as error:
                raise _WireError(f"layer {name or '(unnamed)'!r}, blob {len(blobs)}: "
                                 f"{error}") from None
    return CaffeLayer(name, kind, blobs)


def _blob(buf):
    legacy = [0, 0, 0, 0]                     # num, channels, height, width
    shape, chunks, doubles = None, [], []
    for number, wire, value in _fields(buf):
        if 1 <= number <= 4:
            _expect(number, wire, VARINT, "BlobProto")
            legacy[number - 1] = value
        elif number == 5:                     # data: packed float32 (or, unpacked, one each)
            if wire not in (LENGTH_DELIMITED, FIXED32):
                raise _WireError(f"BlobProto field 5 has wire type {wire}")
            chunks.append(value)
        elif number == 8:                     # double_data: packed float64 (or one each)
            if wire not in (LENGTH_DELIMITED, FIXED64):
                raise _WireError(f"BlobProto field 8 has wire type {wire}")
            doubles.append(value)
        elif number == 7:
            _expect(number, wire, LENGTH_DELIMITED, "BlobProto")
            shape = _blob_shape(value)
    if shape is None:
        shape = tuple(legacy)
    data = _floats(chunks, "<f4") if chunks or not doubles else _floats(doubles, "<f8")
    if data.size != math.prod(shape):
        raise _WireError(f"holds {data.size} values, its shape {shape} says "
                         f"{math.prod(shape)}")
    try:
        return data.astype(np.float32, copy=False).reshape(shape)
    except ValueError:                        # an empty blob of absurd dims, (0, 2**62)
        raise _WireError(f"an empty blob of impossible shape {shape}") from None


def _floats(chunks, dtype):
    """The values of a repeated float field: each chunk a packed run, or one unpacked value."""
    size = np.dtype(dtype).itemsize
    for chunk in chunks:
        if len(chunk) % size:
            raise _WireError(f"a packed array of {len(chunk)} bytes, not a whole number of "
                             f"{size}-byte values")
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return np.frombuffer(raw, dtype=dtype).copy()           # a copy: not a view of the file


def _blob_shape(buf):
    dims = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue
        if wire == VARINT:                    # unpacked: one dim per field
            dims.append(value)
        else:                                 # packed: a run of varints
            _expect(number, wire, LENGTH_DELIMITED, "BlobShape")
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim)
    if any(dim >= 1 << 63 for dim in dims):
        raise _WireError(f"a negative dimension in the blob shape {dims}")
    return tuple(dims)
