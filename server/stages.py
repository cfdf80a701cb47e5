"""The order of the inference pipeline: every request passes these stages, first to last.

Each entry is a :data:`~batchwire.server.pipeline.StageFactory`, called once per
model chain (see :class:`~batchwire.server.pipeline.Pipeline`); a factory that returns
None keeps its stage out of that chain. To add a stage, write its module and add one
line here where it belongs: before :class:`Resolve` it sees the model name the caller
asked for and may choose another version; between :class:`Validate` and
:class:`Submit` it sees a checked request; anywhere, it may answer itself or watch the
result come back. Tracing and the front end's encoding wrap the whole chain
(:meth:`batchwire.server.dataplane.DataPlane.infer`).
"""

from __future__ import annotations

from batchwire.server.access import Authorize
from batchwire.server.audit_stage import audit
from batchwire.server.drift_stage import drift
from batchwire.server.limits import admit
from batchwire.server.pipeline import StageFactory
from batchwire.server.request_stages import Decode, Resolve, Submit, Validate, count_rejections
from batchwire.server.response_cache_stage import ResponseCaching
from batchwire.server.shadow import shadow
from batchwire.server.shared_memory_stage import SharedMemory
from batchwire.server.traffic_split import traffic_split

__all__ = ["STAGES"]

STAGES: tuple[StageFactory, ...] = (
    audit,  # one record per request, refusals included, in the audit log (--audit-log only)
    Authorize.create,  # the caller's principal may infer on this model (auth config only)
    admit,  # caps on requests in flight, server-wide and per connection (when set)
    traffic_split,  # a version for requests naming none, by the model's weights (when set)
    shadow,  # a share of requests also runs on a shadow version, answers compared (when set)
    Resolve,  # model name + version -> the ready model version
    count_rejections,  # failures from here on count in that version's statistics
    Decode,  # the front end's wire message -> InferenceRequest
    SharedMemory,  # inputs read from, outputs written to, registered shared memory
    Validate,  # the request against the model's inputs and outputs
    drift,  # inputs and outputs counted against the version's reference profile (when it has one)
    ResponseCaching.create,  # response cache hits, identical requests run once (when on)
    Submit,  # the model's batcher answers
)
