"""First start of a dev cluster: tenant `dev`'s instance, access points, credentials, sealing key
and profiles, made through the gateway with the bootstrap administrator's credential.

Each step looks before it makes, so a first `dev up` that was interrupted here can simply run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from client_sdk.admin_client import AdminClient
from client_sdk.credentials import CredentialBundle, write_profile
from client_sdk.kms_client import KmsClient
from foundation.errors import AliasNotFoundError, InstanceNotFoundError, KeyNotFoundError

TIMEOUT = 30.0
TENANT = "dev"
INSTANCE = "dev-dedicated"
#: The key that seals users' public keys for the directory (`keyrelay msg register --key`).
SEALING_ALIAS = "alias/directory"


def provision(root: Path, state: dict, profiles: Iterable) -> None:
    """Make what the profiles need (see the module docstring) and write the profile files."""
    bootstrap = state["bootstrap"]
    operator = CredentialBundle.from_files(bootstrap["ca"], bootstrap["cert"], bootstrap["key"])
    gateway, relay, private = state["gateway"], state["relay"], state["private_endpoints"]
    written = {}
    with AdminClient(gateway, credentials=operator, timeout=TIMEOUT) as admin:
        try:
            admin.describe_instance(INSTANCE)
        except InstanceNotFoundError:
            admin.register_instance(INSTANCE, TENANT, state["dedicated_endpoints"], private[INSTANCE])
        points = {p.name: p for p in admin.iter_access_points(TENANT)}
        for spec in profiles:
            point = points.get(spec.access_point) or admin.create_access_point(
                TENANT, spec.access_point, spec.role, key_patterns=["*"]
            )
            folder = root / "credentials" / spec.name
            files = admin.issue_credential(point.access_point_id, validity_days=365, out_dir=folder).files
            files["profile"].unlink()  # the profile below, with the relay and private endpoint, replaces it
            written[spec.name] = write_profile(
                root / spec.file, gateway, files["ca"], files["cert"], files["key"], private, relay_endpoint=relay
            )
    with KmsClient(profile=written["admin"], timeout=TIMEOUT) as kms:
        try:
            kms.describe_key(SEALING_ALIAS)
        except (AliasNotFoundError, KeyNotFoundError):
            kms.create_key(description="sealing key of the messaging directory (keyrelay dev)", alias=SEALING_ALIAS)
