"""Helpers of the data-plane tests (importable as ``dataplane_testkit``): requests, stages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from batchwire.protos import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from batchwire.server.pipeline import Handler, Stage

VERSIONED_CONFIG = """
name: "versioned"
backend: "python"
max_batch_size: 8
version_policy: { all: {} }
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
"""

VERSIONED_SOURCE = '''
class BatchwireModel:
    """Y = X + the version number, so a response says which version computed it."""

    def load(self, spec, device, instance_index):
        self.offset = float(spec.version)

    def execute(self, inputs):
        return {"Y": inputs["X"] + self.offset}
'''


def x_request(
    x: float, *, model: str = "versioned", version: str = "", request_id: str = ""
) -> pb.ModelInferRequest:
    """A request for one item X = ``x`` (FP32, shape [1, 1])."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[x]], np.float32).tobytes())
    return request


def y_of(response: pb.ModelInferResponse) -> float:
    """The one Y value of a ``versioned`` response."""
    return float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])


def chain_stages(chain: Handler) -> Iterator[Stage]:
    """The stages of a chain, first to last, following their ``next`` links."""
    from batchwire.server.pipeline import Stage

    stage: object = chain
    while isinstance(stage, Stage):
        yield stage
        stage = stage.next
