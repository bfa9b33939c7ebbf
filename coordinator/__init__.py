"""The shardbank coordinator: leader election through etcd (`election`),
two-phase commit of cross-shard transfers (`twopc`, rules in `decisions`),
recovery of in-doubt transfers (`recovery`), and the gRPC process (`server`).
The protocol is described in docs/2pc.md.
"""
