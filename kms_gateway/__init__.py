"""The KMS gateway: the one public door of the KMS (seed 001, claims 1-6)."""
