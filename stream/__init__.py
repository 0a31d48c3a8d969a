"""finsent.stream: Kafka, the scoring worker and the store.

* :mod:`finsent.stream.kafka` -- topic creation, client factories, the one security translation;
* :mod:`finsent.stream.worker` -- the Faust app whose agent scores ``finsent.raw`` in batches (its
  docstring explains when offsets are committed);
* :mod:`finsent.stream.service` -- running that app as a service or in a background thread;
* :mod:`finsent.stream.metrics` -- the worker's Prometheus metrics and the one ``/metrics`` server;
* :mod:`finsent.stream.broker` -- the embedded Tansu broker (development and tests);
* :mod:`finsent.stream.store` -- ClickHouse (server or chdb) behind :class:`finsent.core.store.Store`.
"""
