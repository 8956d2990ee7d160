"""Generated protobuf and gRPC modules for the keyrelay API."""
