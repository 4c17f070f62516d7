"""Generated GRPC code of the server API (``api.proto``); regenerate with ``python -m node.api.proto.generate``."""
