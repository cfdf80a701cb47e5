"""Python clients for batchwire (and any KServe v2 / Triton gRPC server).

numpy arrays in, numpy arrays out::

    from batchwire.clients import InferenceClient

    with InferenceClient("127.0.0.1:8001") as client:
        result = client.infer("mlp", {"INPUT__0": np.zeros((1, 64), np.float32)})
        logits = result.as_numpy("OUTPUT__0")

:class:`AsyncInferenceClient` offers the same methods as coroutines over
``grpc.aio``. Failures raise :class:`InferenceServerError`, which carries the
``grpc.StatusCode`` and the server's message. A secured server takes
``token=`` (a bearer token), ``headers=`` (sent with every call) and ``ssl=True``
with ``root_certificates=`` / ``private_key=`` / ``certificate_chain=`` files, as
tritonclient spells them (:func:`ssl_credentials` builds the credentials).
``batchwire infer`` (see :mod:`batchwire.clients.cli`) is the command-line front end.
"""

from batchwire.clients._calls import InferResult
from batchwire.clients.aio import AsyncInferenceClient
from batchwire.clients.client import InferenceClient
from batchwire.clients.errors import InferenceServerError
from batchwire.clients.tensors import InferInput, bf16_to_float32, float_to_bf16
from batchwire.clients.tls import CertificateFileError, ssl_credentials

__all__ = [
    "AsyncInferenceClient",
    "CertificateFileError",
    "InferInput",
    "InferResult",
    "InferenceClient",
    "InferenceServerError",
    "bf16_to_float32",
    "float_to_bf16",
    "ssl_credentials",
]
