"""batchwire: a gRPC inference server for PyTorch models with dynamic micro-batching.

Subpackages (each a top-level folder of the repository, mapped in pyproject.toml):
``core`` (protocol-agnostic data plane), ``protos`` (KServe v2 / Triton protobufs),
``server`` (gRPC front end, model repository, command line), ``batching`` (queue,
scheduler, executor), ``clients`` (Python client), ``examples`` (built-in models),
``telemetry`` (tracing, metrics, statistics), ``loadtest`` (Locust) and
``bench`` (benchmarks).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchwire")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
