"""Leader election: the rule as a pure function, the Lease it writes, the settings that
must make a leader stop before a standby may start, and the standby's /healthz. The
elector against a real API server is in tests/integration/test_high_availability.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from distillery.kube.leader import LeaseRecord, StandbyHealth, Step, lease_body, next_step
from distillery.settings import Settings

ME, OTHER = "operator-a", "operator-b"


def record(holder: str | None, seconds: float = 15, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder, seconds, transitions, resource_version="42")


def test_no_lease_is_created() -> None:
    assert next_step(None, ME, 0) == (Step.CREATE, 0.0)


def test_our_own_lease_is_renewed_however_old() -> None:
    assert next_step(record(ME), ME, 1e6) == (Step.RENEW, 0.0)


def test_a_released_lease_is_taken_at_once() -> None:
    assert next_step(record(None), ME, 0) == (Step.TAKE, 0.0)


def test_a_live_lease_of_another_is_waited_for_the_rest_of_its_duration() -> None:
    step, wait = next_step(record(OTHER, seconds=15), ME, 4)
    assert step is Step.WAIT and wait == pytest.approx(11)


def test_a_lease_not_renewed_for_its_duration_is_taken() -> None:
    assert next_step(record(OTHER, seconds=15), ME, 15)[0] is Step.TAKE
    assert next_step(record(OTHER, seconds=15), ME, 14.9)[0] is Step.WAIT


@given(
    holder=st.sampled_from([ME, OTHER, None]),
    seconds=st.floats(1, 600),
    unchanged=st.floats(0, 1200),
)
def test_another_holders_live_lease_is_never_taken(
    holder: str | None, seconds: float, unchanged: float
) -> None:
    step, wait = next_step(record(holder, seconds), ME, unchanged)
    if holder == OTHER and unchanged < seconds:
        assert step is Step.WAIT and 0 < wait <= seconds
    else:
        assert step is not Step.WAIT and wait == 0


def test_the_lease_body_says_who_holds_it_and_for_how_long() -> None:
    now = datetime(2026, 12, 2, 14, 0, 1, 250000, tzinfo=UTC)
    body = lease_body("ops", "distillery", ME, 14.2, 4, now, resource_version="7")
    assert body["metadata"] == {"name": "distillery", "namespace": "ops", "resourceVersion": "7"}
    spec = body["spec"]
    # leaseDurationSeconds is an int32: never shorter than asked.
    assert spec["holderIdentity"] == ME and spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"] == spec["acquireTime"] == "2026-12-02T14:00:01.250000Z"
    assert spec["leaseTransitions"] == 4
    kept = lease_body("ops", "distillery", ME, 15, 4, now, acquire_time="2026-12-01T00:00:00Z")
    assert kept["spec"]["acquireTime"] == "2026-12-01T00:00:00Z"
    assert LeaseRecord.from_object(body) == LeaseRecord(ME, 15, 4, "7", spec["acquireTime"])


def test_a_released_lease_reads_as_having_no_holder() -> None:
    body = lease_body("ops", "distillery", None, 1, 2, datetime.now(UTC))
    assert LeaseRecord.from_object(body).holder is None


@pytest.mark.parametrize(
    "lease,renew,retry",
    [(10, 10, 2), (15, 20, 2), (15, 10, 10), (15, 10, 12)],
)
def test_timings_that_could_let_two_instances_act_are_refused(
    lease: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValidationError, match="retry period < renew deadline < lease"):
        Settings(
            leader_election=True,
            leader_election_lease_seconds=lease,
            leader_election_renew_deadline_seconds=renew,
            leader_election_retry_period_seconds=retry,
        )


def test_leader_election_and_peering_are_one_or_the_other() -> None:
    with pytest.raises(ValidationError, match="set one"):
        Settings(leader_election=True, peering="distillery")


def test_the_identity_is_given_or_the_pods_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(identity="op-1").instance_identity() == "op-1"
    monkeypatch.setenv("POD_NAME", "distillery-7d9f-abcde")
    assert Settings().instance_identity() == "distillery-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    assert Settings().instance_identity() != ""


def test_a_standby_answers_its_liveness_probe() -> None:
    health = StandbyHealth("127.0.0.1", 0)
    port = health.server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {"leader": False}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert err.value.code == 404
        err.value.close()
    finally:
        health.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
