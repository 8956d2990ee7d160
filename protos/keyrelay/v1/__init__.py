"""Generated protobuf and gRPC modules for keyrelay.v1 (do not edit the *_pb2* files)."""
