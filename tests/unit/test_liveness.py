"""When a running Triton is probed, and when failed probes mean it has stopped answering (no clock, no I/O)."""

from __future__ import annotations

import pytest

from gateway.embedded.liveness import Liveness

HUNG = "no answer within 10s"


def never_called() -> str | None:
    raise AssertionError("the schedule runs no probe itself")


def test_a_probe_is_due_one_interval_after_a_start_and_after_each_probe() -> None:
    liveness = Liveness(never_called, interval=10.0, failures=3)
    liveness.reset(100.0)
    assert not liveness.due(109.9) and liveness.due(110.0)
    liveness.record(None, 112.5)  # a slow answer: the next one is counted from its end
    assert not liveness.due(122.4) and liveness.due(122.5)
    liveness.record(HUNG, 130.0)
    assert not liveness.due(139.9) and liveness.due(140.0)


def test_failures_in_a_row_give_the_verdict_and_an_answer_clears_them() -> None:
    liveness = Liveness(never_called, interval=10.0, failures=3)
    liveness.reset(0.0)
    assert [liveness.record(p, 0.0) for p in (HUNG, HUNG, None, HUNG, HUNG)] == [None] * 5
    assert liveness.failed == 2
    assert liveness.record("UNAVAILABLE: gone", 0.0) == "3 failed liveness probes in a row, the last: UNAVAILABLE: gone"
    assert Liveness(never_called, failures=1).record(HUNG, 0.0) == (
        "1 failed liveness probe in a row, the last: no answer within 10s"
    )


def test_a_restart_starts_a_clean_record() -> None:
    liveness = Liveness(never_called, interval=10.0, failures=2)
    liveness.reset(0.0)
    assert liveness.record(HUNG, 10.0) is None
    liveness.reset(50.0)
    assert liveness.failed == 0 and not liveness.due(59.0) and liveness.due(60.0)
    assert liveness.record(HUNG, 60.0) is None


def test_interval_zero_probes_at_once_and_nonsense_is_refused() -> None:
    liveness = Liveness(never_called, interval=0.0, failures=1)
    liveness.reset(5.0)
    assert liveness.due(5.0)
    with pytest.raises(ValueError):
        Liveness(never_called, interval=-1.0)
    with pytest.raises(ValueError):
        Liveness(never_called, failures=0)
