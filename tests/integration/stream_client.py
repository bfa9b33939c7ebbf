"""A write-stream caller to be killed: `python -m tests.integration.stream_client ADDRESS [FRAME_ADDRESS]`.

Opens three `NodeStream`s to the node (auth off; on its frame lane when
FRAME_ADDRESS is given, else on gRPC WriteStreams), prints `ready` once the
first deposit is answered, then keeps 8 messages in flight per stream until
killed (test_node_streams.py kills it with SIGKILL mid-stream)."""

from __future__ import annotations

import asyncio
import random
import sys

import grpc

from ledger_node.testing import account, deposit
from shardbank import frame_lane
from shardbank.node_stream import NodeStream
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc

IN_FLIGHT_PER_STREAM = 8
DEADLINE_S = 10.0


async def main(address: str, frame_address: str) -> None:
    channel = grpc.aio.insecure_channel(address)
    stub = ledger_pb2_grpc.LedgerNodeStub(channel)
    accounts = [account() for _ in range(4)]
    await stub.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=accounts), timeout=DEADLINE_S)
    if frame_address:
        open_lane = frame_lane.opener(frame_address, frame_lane.Credentials(b"", "caller"), "shard-1")
        streams = [NodeStream(open_lane, "shard-1") for _ in range(3)]
    else:
        streams = [NodeStream(stub.WriteStream, "shard-1") for _ in range(3)]

    async def one(stream: NodeStream) -> None:
        item = deposit(random.choice(accounts).id, 100)
        await stream.send(ledger_pb2.ApplyTransfersRequest(transfers=[item]), DEADLINE_S)

    await one(streams[0])
    print("ready", flush=True)
    while True:
        await asyncio.gather(*(one(s) for s in streams for _ in range(IN_FLIGHT_PER_STREAM)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
