"""Named limits, each with its unit and reason. Enforced at the edge (the
gateway) and again at the node, so an internal caller cannot bypass them.
"""

from __future__ import annotations

# Items in one write RPC: bounds the size of one WriteBatch and one reply.
BATCH_ITEMS_MAX = 8192
# One gRPC message: a full batch of transfers fits with room to spare.
MESSAGE_BYTES_MAX = 16 * 1024 * 1024
MEMO_LENGTH_MAX = 140
REFERENCE_LENGTH_MAX = 64
STATUS_REASON_LENGTH_MAX = 200
ACTOR_LENGTH_MAX = 64
IDEMPOTENCY_KEY_LENGTH_MAX = 64
HISTORY_PAGE_SIZE_DEFAULT = 50
HISTORY_PAGE_SIZE_MAX = 1000
# Pages of the report read side (LedgerNode.ReadJournal / ListAccounts): an
# entry is ~0.2-1 KB, so a full page stays far below MESSAGE_BYTES_MAX, and a
# page is read between two group commits, so it must stay short.
JOURNAL_PAGE_ENTRIES_MAX = 1000
ACCOUNTS_PAGE_SIZE_MAX = 1000
# Concurrent RPCs one server will run; beyond it callers get RESOURCE_EXHAUSTED.
CONCURRENT_RPCS_MAX = 4096
# Deadline a client puts on one call unless told otherwise.
CALL_DEADLINE_S = 10.0
# Operations the node's writer takes into one group commit.
GROUP_COMMIT_ITEMS_MAX = 16384
# Overdraft a customer account may be granted, minor units.
OVERDRAFT_LIMIT_MAX_MINOR = 10**12
