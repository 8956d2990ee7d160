"""Pieces every keyrelay process shares: the error hierarchy, config loading, logging and the
gRPC server skeleton (error mapping, request ids, health, reflection, graceful shutdown)."""
