"""The protocol-agnostic data plane: tensor types, model specs, errors.

Nothing here imports protobuf or gRPC; every front end (gRPC unary, gRPC
streaming, future HTTP) translates its wire format into these types and hands
them to the same :class:`~batchwire.server.dataplane.DataPlane`.
"""
