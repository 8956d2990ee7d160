"""Names and limits that travel on the wire, defined once for every server and client.

Metadata keys:

- `x-request-id`: the request id, sent by clients (optional) and echoed by every server.
- `keyrelay-error-reason`: the `ErrorReason` name of a failed call, in the trailing metadata.
- `keyrelay-tenant`: the tenant a gateway acts for when it calls a node's internal port. Nodes
  trust it because their internal port admits only the gateway.
- `keyrelay-access-point`: the access point a gateway forwards an AdminService call for; the
  shared KMS loads it from its own store and authorizes the call against it.

Limits shared by the SDK, the gateway and the nodes are here too, so that the numbers in the
protos' comments, the servers' checks and the clients' splitting agree.
"""

from __future__ import annotations

REQUEST_ID_METADATA_KEY = "x-request-id"
REASON_METADATA_KEY = "keyrelay-error-reason"
TENANT_METADATA_KEY = "keyrelay-tenant"
ACCESS_POINT_METADATA_KEY = "keyrelay-access-point"

#: Items per BatchDecrypt / BatchGenerateDataKey call.
MAX_BATCH_ITEMS = 1000
#: Distinct keys one batch may name: each is a registry lookup at the gateway.
MAX_BATCH_KEYS = 100
