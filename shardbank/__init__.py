"""shardbank: shared building blocks (money, ids, slots, errors, cluster metadata).

Generated protobuf code lives in shardbank.v1; the processes live in
ledger_node/, coordinator/ and gateway/, the client library and CLI in clients/.
"""
