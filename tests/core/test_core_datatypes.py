"""core.datatypes: the v2 datatype tables and the BYTES wire encoding."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport import ALL_DATATYPES as V2_NAMES

from batchwire.core.datatypes import (
    CONFIG_TO_V2,
    ELEMENT_SIZES,
    NUMPY_DTYPES,
    V2_TO_CONFIG,
    WIRE_DTYPES,
    deserialize_bytes,
    is_known,
    serialize_bytes,
    v2_of_numpy,
)


def test_every_v2_datatype_has_a_storage_dtype_and_a_config_name() -> None:
    assert tuple(NUMPY_DTYPES) == V2_NAMES
    assert all(is_known(name) for name in V2_NAMES)
    assert not is_known("FP8") and not is_known("fp32")
    assert NUMPY_DTYPES["BF16"] == np.uint16  # numpy has no bfloat16: raw storage
    assert NUMPY_DTYPES["BYTES"] == np.object_
    assert CONFIG_TO_V2["TYPE_STRING"] == "BYTES" and V2_TO_CONFIG["BYTES"] == "TYPE_STRING"
    assert {CONFIG_TO_V2[V2_TO_CONFIG[name]] for name in V2_NAMES} == set(V2_NAMES)
    assert "BYTES" not in ELEMENT_SIZES and ELEMENT_SIZES["BF16"] == 2


def test_wire_dtypes_are_little_endian() -> None:
    for name, dtype in WIRE_DTYPES.items():
        if name != "BYTES" and dtype.itemsize > 1:
            assert dtype.str[0] == "<", name
            assert dtype.newbyteorder("=") == NUMPY_DTYPES[name]


@pytest.mark.parametrize(
    ("dtype", "v2"),
    [
        (np.uint16, "UINT16"),  # never BF16: the spec, not the array, says BF16
        (np.float32, "FP32"),
        (np.dtype(">i4"), "INT32"),  # byte order does not change the datatype
        (np.bool_, "BOOL"),
        (np.object_, "BYTES"),
        (np.dtype("S3"), "BYTES"),
        (np.dtype("U3"), "BYTES"),
    ],
)
def test_v2_of_numpy(dtype: np.dtype, v2: str) -> None:
    assert v2_of_numpy(np.dtype(dtype)) == v2


def test_v2_of_numpy_names_a_dtype_without_a_datatype() -> None:
    with pytest.raises(ValueError, match="numpy dtype complex64 has no KServe v2 datatype"):
        v2_of_numpy(np.dtype(np.complex64))


def test_bytes_round_trip_with_length_prefixes() -> None:
    array = np.array([[b"ab", b""], ["\u00e9t\u00e9", b"\x00\xff"]], dtype=np.object_)
    encoded = serialize_bytes(array)
    assert encoded[:6] == b"\x02\x00\x00\x00ab"  # 4-byte little-endian length, then the bytes
    decoded = deserialize_bytes(encoded, 4)
    assert decoded.tolist() == [b"ab", b"", "\u00e9t\u00e9".encode(), b"\x00\xff"]
    assert deserialize_bytes(memoryview(encoded), 4).tolist() == decoded.tolist()


@pytest.mark.parametrize(
    ("buffer", "count", "message"),
    [
        (b"\x02\x00\x00\x00ab\x01", 2, "ends after 1 of 2 elements"),
        (b"\x05\x00\x00\x00ab", 1, "element 0 declares 5 bytes at offset 4 but only 2 remain"),
        (b"\x01\x00\x00\x00abc", 1, "holds 2 trailing bytes after 1 elements"),
    ],
)
def test_malformed_bytes_buffers_say_what_is_wrong(buffer: bytes, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deserialize_bytes(buffer, count)
