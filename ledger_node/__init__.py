"""A ledger node: one shard of shardbank (state machine, RocksDB store, writer, gRPC server, verify)."""
