"""``finsent.core.wait.wait_until``: the one poll loop of the demo, the benchmarks and the tests."""

from __future__ import annotations

import time

import pytest

from finsent.core.errors import FinsentError
from finsent.core.wait import WaitTimeout, wait_until


def test_returns_as_soon_as_the_predicate_holds() -> None:
    calls = []

    def ready() -> bool:
        calls.append(1)
        return len(calls) >= 3

    t0 = time.monotonic()
    wait_until(ready, 5, 0.01, what="three calls")
    assert len(calls) == 3 and time.monotonic() - t0 < 1


def test_timeout_names_what_it_waited_for_and_is_a_finsent_and_timeout_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2s waiting for the moon") as info:
        wait_until(lambda: False, 0.2, 0.05, what="the moon")
    assert 0.2 <= time.monotonic() - t0 < 2
    assert isinstance(info.value, FinsentError) and isinstance(info.value, TimeoutError)
    assert info.value.hint  # says what to look at next


def test_predicate_is_tried_once_even_with_no_time_left() -> None:
    wait_until(lambda: True, 0, what="nothing")
    with pytest.raises(WaitTimeout):
        wait_until(lambda: False, 0, what="nothing")


def test_check_gives_up_early_with_its_own_error() -> None:
    def dead() -> None:
        raise RuntimeError("worker 0 exited with 3")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until(lambda: False, 30, 0.05, what="a ready worker", check=dead)
    assert time.monotonic() - t0 < 1


def test_a_condition_that_holds_when_the_check_gives_up_wins() -> None:
    """A process waited on for its exit, with a check that fails once it has exited: the wait succeeds.

    (The CI replay's replay-under-broker-restart test failed on this order: the check ran first and saw the exit.)
    """
    state = {"exited": False}

    def check() -> None:
        if state["exited"]:
            raise RuntimeError("the process exited")

    def predicate() -> bool:
        done = state["exited"]
        state["exited"] = True  # it exits between this poll and the check
        return done

    wait_until(predicate, 5, 0.01, what="the exit", check=check)


def test_a_check_that_fails_while_the_condition_does_not_hold_still_raises() -> None:
    with pytest.raises(RuntimeError, match="dead"):
        wait_until(lambda: False, 5, 0.01, check=lambda: (_ for _ in ()).throw(RuntimeError("dead")))
