"""Protocol buffers for the KServe v2 / Triton gRPC protocol and model config.

``grpc_service_pb2`` / ``grpc_service_pb2_grpc`` hold the inference service,
``model_config_pb2`` the ``config.pbtxt`` schema. Regenerate with
``python -m batchwire.protos.generate``.
"""
