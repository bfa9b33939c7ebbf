"""Compliance and end-of-day reports over the live cluster.

`journal_reader` pages a shard's journal and accounts through the LedgerNode
read RPCs; `ledger_scan` replays them (`ledger_node.replay`, the same checks
as the offline `shardbank verify`) into the day's committed transfers, an
account directory and a trial-balance cut; `aml` and `eod` are pure functions
of those; `output` and `chart` write the files. CLI: `clients.cli_report`.
"""
