"""Map data-plane errors onto gRPC status codes."""

from __future__ import annotations

import grpc

from batchwire.core.errors import StatusCode

GRPC_STATUS: dict[StatusCode, grpc.StatusCode] = {
    code: getattr(grpc.StatusCode, code.value) for code in StatusCode
}
