"""One dispatch tick at a time without reserved Lambda concurrency: the DynamoDB lease on the
moto server (a conditional put is atomic there as on AWS)."""

from __future__ import annotations

import threading

from facefleet.control.lambda_dispatch import handler
from facefleet.control.lease import DispatchLease
from tests.flows_support import create_lease_table


def test_one_holder_at_a_time_and_an_expired_lease_is_taken_over(env) -> None:
    create_lease_table(env.names, env.aws)
    lease = DispatchLease(env.names.dispatch_lease_table, env.aws)
    assert lease.acquire("a", now_s=1000.0, ttl_s=60)
    assert not lease.acquire("b", now_s=1030.0, ttl_s=60)  # held
    assert lease.acquire("b", now_s=1061.0, ttl_s=60)  # a's expired
    lease.release("a")  # a no longer holds it: nothing happens
    assert not lease.acquire("c", now_s=1070.0, ttl_s=60)
    lease.release("b")
    assert lease.acquire("c", now_s=1070.0, ttl_s=60)


def test_concurrent_ticks_get_exactly_one_lease(env) -> None:
    create_lease_table(env.names, env.aws)
    lease = DispatchLease(env.names.dispatch_lease_table, env.aws)
    winners: list[str] = []
    start = threading.Barrier(6)

    def tick(owner: str) -> None:
        start.wait()
        if lease.acquire(owner, now_s=5000.0):
            winners.append(owner)

    threads = [threading.Thread(target=tick, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_the_lambda_skips_a_tick_while_the_lease_is_held(env, monkeypatch) -> None:
    import time

    create_lease_table(env.names, env.aws)
    DispatchLease(env.names.dispatch_lease_table, env.aws).acquire("other", time.time(), 60)
    monkeypatch.setenv("FACEFLEET_PREFIX", env.names.prefix)
    monkeypatch.setenv("FACEFLEET_GROUPING_PREFIX", env.names.grouping_prefix)
    result = handler({}, None)
    assert result["skipped"] == "lease held" and result["jobs"] == 0
