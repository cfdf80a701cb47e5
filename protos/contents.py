"""Which ``InferTensorContents`` field carries each v2 datatype.

The protocol defines typed fields for the types it widens into (INT8/INT16 go in
``int_contents`` ...). FP16 and BF16 have no field: they travel only as raw bytes.
"""

CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
