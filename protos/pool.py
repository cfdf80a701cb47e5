"""The descriptor pool that holds batchwire's protocol messages.

Our messages keep Triton's full names (``inference.ModelInferRequest`` ...)
because the gRPC method paths and server reflection must match Triton's. The
stock ``tritonclient`` registers the same names in protobuf's default pool, and
protobuf refuses a second, differently built file defining them. Generated
modules therefore register into this private pool, so batchwire and
tritonclient can be imported by the same process (a service that uses both, or
our own tests). Messages are wire-identical either way.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
