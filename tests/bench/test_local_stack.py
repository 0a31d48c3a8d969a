"""``finsent.stack.LocalStack``: the demo's and the benchmarks' broker + store + workers, started and stopped once.

Real parts only: a Tansu broker, chdb (the session's data path, a fresh database: one chdb path per
process), the real scoring worker; the classifier is the plumbing benchmark's constant one (no model).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from finsent.bench.plumbing import ConstantClassifier
from finsent.core.errors import FinsentError
from finsent.core.settings import load_settings
from finsent.core.wait import wait_until
from finsent.stack import LocalStack
from tests.stream_helpers import make_items, produce_items

pytestmark = pytest.mark.integration


def test_stack_scores_into_its_store_and_stops_everything_at_exit(chdb_db_url: str) -> None:
    with LocalStack(load_settings(metrics_port=0), name="t-stack", store=chdb_db_url, partitions=2) as stack:
        s = stack.settings
        assert s.kafka.brokers == stack.bootstrap and s.storage.store == chdb_db_url and s.kafka.partitions == 2
        assert s.kafka.consumer_group == f"t-stack-{stack.run_id}"
        assert (stack.topics.raw, stack.topics.scored) == (s.kafka.topic_raw, s.kafka.topic_scored)
        worker = stack.start_worker(classifier=ConstantClassifier())
        produce_items(s, make_items(20, prefix="stack"))
        wait_until(lambda: worker.scorer.stats.stored >= 20, 60, what="20 rows stored")
        assert stack.store.count()["rows"] == 20
        url = stack.serve_api()
        with urllib.request.urlopen(f"{url}/v1/count", timeout=10) as resp:
            assert json.loads(resp.read())["rows"] == 20
        broker, workdir = stack.broker, stack.workdir
        assert broker is not None and broker.proc is not None and workdir is not None and workdir.is_dir()
    assert not worker.alive()
    assert broker.proc is None or broker.proc.poll() is not None
    assert not workdir.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/v1/count", timeout=2)


@pytest.mark.parametrize("error", [ZeroDivisionError, KeyboardInterrupt], ids=["error", "ctrl-c"])
def test_an_error_or_ctrl_c_in_the_block_stops_the_stack_and_propagates(
    chdb_db_url: str, error: type[BaseException]
) -> None:
    with pytest.raises(error), LocalStack(load_settings(metrics_port=0), store=chdb_db_url) as stack:
        worker = stack.start_worker(classifier=ConstantClassifier())
        broker, workdir = stack.broker, stack.workdir
        raise error()
    assert not worker.alive()
    assert broker is not None and (broker.proc is None or broker.proc.poll() is not None)
    assert workdir is not None and not workdir.exists()


def test_a_failed_start_stops_what_had_started() -> None:
    # nothing listens on port 1: the store's schema cannot be created, after the broker started
    stack = LocalStack(load_settings(metrics_port=0), store="clickhouse://default@127.0.0.1:1/x")
    with pytest.raises(FinsentError):
        stack.start()
    assert stack.broker is not None and (stack.broker.proc is None or stack.broker.proc.poll() is not None)
    assert stack.workdir is not None and not stack.workdir.exists()


def test_keep_workdir_leaves_it_on_disk(chdb_db_url: str) -> None:
    with LocalStack(load_settings(metrics_port=0), store=chdb_db_url, keep_workdir=True, open_store=False) as stack:
        workdir = stack.workdir
    assert workdir is not None and (workdir / "tansu.log").is_file()
    import shutil

    shutil.rmtree(workdir)
