"""Publish records to Kafka as whole record batches, partitioned exactly as a keyed ``send`` would.

The worker publishes each stored group (up to 2,048 scored items and their dead letters) at once.
One ``producer.send`` per record costs a future, a partitioner call and Faust's and aiokafka's
per-message bookkeeping on the event loop; in the plumbing profile that was ~14% of the loop.
aiokafka's public ``create_batch``/``send_batch`` take a whole record batch per partition and
give one future per batch, acknowledged by the broker like any other (the producer's ``acks``).

Partitioning stays the Kafka default, so a key lands where any Kafka client would put it:
``murmur2(key) & 0x7fffffff`` modulo the partition count (the Java client's and aiokafka's
``DefaultPartitioner``). The hash does not depend on the partition count, so the worker computes
it in its model thread (:func:`key_hash`), off the event loop. A record without a key goes to a
random available partition, as with ``send``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from aiokafka.partitioner import murmur2

#: (key, value, key_hash) with key_hash = :func:`key_hash` (key), or None for a record without a key
Record = tuple[bytes | None, bytes, int | None]


def key_hash(key: bytes | None) -> int | None:
    """The partition-count-independent part of Kafka's default partitioner (None: no key)."""
    return None if key is None else murmur2(key) & 0x7FFFFFFF


def partition_for(h: int | None, partitions: Sequence[int], available: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for a key hashed to ``h`` (see the module doc)."""
    if h is None:
        return random.choice(list(available) or list(partitions))
    return partitions[h % len(partitions)]


async def send_batches(producer: Any, topic: str, records: Sequence[Record]) -> list[Any]:
    """Queue ``records`` on ``topic`` as record batches; returns the futures of the broker's acks.

    ``producer`` is an ``aiokafka.AIOKafkaProducer``. Records keep their order within a partition.
    A record too large for a batch of its own is sent alone through ``producer.send``.
    """
    if not records:
        return []
    known = await producer.partitions_for(topic)
    partitions = list(known)  # the list aiokafka's own send partitions over: same order, same result
    available = list(producer.client.cluster.available_partitions_for_topic(topic))
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for key, value, h in records:
        by_partition.setdefault(partition_for(h, partitions, available), []).append((key, value))
    futures = []
    for partition, recs in by_partition.items():
        batch = producer.create_batch()
        filled = 0
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is not None:
                filled += 1
                continue
            if filled:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch, filled = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    filled = 1
                    continue
            futures.append(await producer.send(topic, value, key=key, partition=partition))
        if filled:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures
