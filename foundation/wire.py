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

#: The largest KeyManagementService or AdminService request body a gateway or private endpoint
#: takes: a batch of 1000 data-key blobs with short encryption contexts fits, and the largest
#: single-item request (ReEncrypt of a 4 KiB plaintext's blob with two full encryption contexts,
#: about 155 KiB) three times over. gRPC's transport refuses larger bodies before any handler runs.
#: It bounds memory: a daemon holds every body in flight, several times over.
MAX_KMS_REQUEST_BYTES = 512 * 1024
#: A node's internal port takes a little more: the gateway rewrites aliases to key ids on the way.
MAX_INTERNAL_REQUEST_BYTES = MAX_KMS_REQUEST_BYTES + 64 * 1024
#: The largest relay request body: the largest envelope (256 KiB) and room to refuse a somewhat
#: larger one with ENVELOPE_TOO_LARGE rather than gRPC's bare size error.
MAX_RELAY_REQUEST_BYTES = 320 * 1024
