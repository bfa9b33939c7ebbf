"""The public gateway: serves `shardbank.v1.Bank`, validates at the edge and
routes by the slot map to ledger nodes and the coordinator leader."""
