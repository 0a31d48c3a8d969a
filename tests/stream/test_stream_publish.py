"""Batch publishing (``finsent.stream.publish``): Kafka's default partitioning, every record once, in order.

The unit test compares the partition choice with aiokafka's own ``DefaultPartitioner``; the
integration test publishes through a real Tansu broker and compares each key's partition with
where aiokafka's plain keyed ``send`` puts the same key, including a record larger than a batch
(sent on its own) and records without a key.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from finsent.core.settings import Settings
from finsent.stream.broker import EmbeddedBroker, free_port
from finsent.stream.kafka import ensure_topics
from finsent.stream.publish import key_hash, partition_for, send_batches
from tests.stream_helpers import read_topic


def test_partition_for_is_kafkas_default_partitioner() -> None:
    rnd = random.Random(7)
    keys = [b"", b"a", "é-ü-€".encode()] + [rnd.randbytes(rnd.randrange(1, 40)) for _ in range(500)]
    for n in (1, 2, 3, 4, 7, 12):
        parts = list(range(n))
        for k in keys:
            assert partition_for(key_hash(k), parts, parts) == DefaultPartitioner()(k, parts, parts), (k, n)
    assert key_hash(None) is None
    for _ in range(50):
        assert partition_for(None, [0, 1, 2, 3], [1, 3]) in (1, 3)
        assert partition_for(None, [0, 1, 2], []) in (0, 1, 2)


@pytest.mark.integration
def test_send_batches_through_a_real_broker_matches_keyed_sends(unique_name: str) -> None:
    broker = EmbeddedBroker(port=free_port(), start_timeout_s=30).start()
    try:
        s = Settings(brokers=broker.bootstrap, partitions=4)
        batched, plain = f"batched.{unique_name}", f"plain.{unique_name}"
        ensure_topics(s.kafka, [batched, plain])
        rnd = random.Random(3)
        records = [(f"id-{i}".encode(), f"v{i}".encode() + b"x" * rnd.randrange(0, 300)) for i in range(400)]
        records.insert(123, (b"big", b"B" * 40_000))  # larger than a 16 KB batch: sent alone
        unkeyed = [(None, f"nokey-{i}".encode()) for i in range(5)]

        async def publish() -> dict[bytes, int]:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=-1, max_batch_size=16_384)
            await producer.start()
            try:
                futs = await send_batches(producer, batched, [(k, v, key_hash(k)) for k, v in records + unkeyed])
                assert len(futs) < len(records) / 10  # whole batches, not one future per record
                await asyncio.gather(*futs)
                where = {}
                for k, v in records:
                    md = await (await producer.send(plain, v, key=k))
                    where[k] = md.partition
                return where
            finally:
                await producer.stop()

        expected_partition = asyncio.run(publish())
        got = read_topic(s, batched, expect=len(records) + len(unkeyed))
        assert sorted((r.key, r.value) for r in got if r.key is not None) == sorted(records)  # each once
        assert sorted(r.value for r in got if r.key is None) == sorted(v for _, v in unkeyed)
        per_partition: dict[int, list[bytes]] = defaultdict(list)
        for r in sorted(got, key=lambda r: (r.partition, r.offset)):
            if r.key is not None:
                assert r.partition == expected_partition[r.key], r.key
                per_partition[r.partition].append(r.key)
        for p, keys in per_partition.items():  # input order within each partition
            assert keys == [k for k, _ in records if expected_partition[k] == p]
        assert len(per_partition) == 4
    finally:
        broker.stop()
