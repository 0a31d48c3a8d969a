"""The scoring pipeline as named parts, each testable without Kafka (see :mod:`finsent.stream.worker`).

* :mod:`.health` -- readiness (``/readyz``): model, group join, store, extensions;
* :mod:`.scoring` -- decode, score, build the scored rows (pure functions, the model thread);
* :mod:`.scheduler` -- continuous batching: which taken batches go to which model call, in order;
* :mod:`.store_stage` -- insert with retry/backoff, the store's readiness, grouping;
* :mod:`.publish_stage` -- send scored items and dead letters, wait for the broker, retry;
* :mod:`.offsets` -- the ack guard and the per-partition positions (commit only what is stored and published).
"""
