"""The soak's short form (issue 19): ~60 s of mixed clients against the real 2-worker
server with faults injected (bench/soak.py runs the long form and prints the figures).

Asserted: no 500 anywhere, every client served within SERVED_WITHIN_S, no leftover
temporaries, idle WebSocket connections unable to block a real session, no phantom or
resurrected avatar, every live frame delivered while whole-file work is served beside it (the
lag is a speed: the bench measures it, on a quiet machine, against the 300 ms p95 target).
"""

from __future__ import annotations

import json

import pytest

from bench.soak import Plan, run
from lipsync.settings import Settings

pytestmark = pytest.mark.slow

SECONDS = 60.0
# Every client (whole-file, streamed, live, avatar churn) has each request served within
# this long from its first attempt, refusals, retries and faults included.
# Generous: on the shared 2-core CI machine (load average 14-19 while it ran) a 1 s
# generation took 10-20 s and a worker killed mid-request costs its requests a retry.
SERVED_WITHIN_S = 150.0


@pytest.fixture(scope="module")
def soak(untrained_models, tmp_path_factory) -> dict:
    result = run(untrained_models, Plan(seconds=SECONDS), tmp_path_factory.mktemp("soak"))
    print(json.dumps(result, indent=2))
    return result


def test_no_500_anywhere(soak):
    for kind, counts in soak["statuses"].items():
        assert "500" not in counts, (kind, counts)  # a full disk included


def test_every_client_is_served_within_the_bound(soak):
    waits = soak["longest_to_served_s"]
    clients = {"whole_file_0", "streamed_0", "live_0", "live_1", "churn"}
    assert clients <= set(waits), waits
    assert max(waits.values()) <= SERVED_WITHIN_S, waits


def test_live_sessions_keep_up_beside_whole_file_work(soak):
    assert soak["live_frames"] > 0
    assert soak["live_frames_lost"] == 0  # every frame of every flushed utterance arrived
    served = soak["statuses"]["whole_file"].get("200", 0) + soak["statuses"]["streamed"].get(
        "200", 0
    )
    assert served > 0  # the whole-file work went on meanwhile
    # The lag itself is a speed (bench/soak.py prints it): on a CPU that renders a session
    # below real time (no AMX) it grows with the run whatever the priority. That live
    # batches go first is tested as a mechanism in tests/test_inference_priority.py.


def test_a_killed_worker_is_replaced_and_the_workers_hold_no_more_files(soak):
    assert soak["faults"]["kill"]["replaced_s"] < 30
    survivors = set(soak["workers_before"]) & set(soak["workers_after"])
    for pid in survivors:
        before, after = soak["workers_before"][pid], soak["workers_after"][pid]
        assert after["fds"] <= before["fds"] + 8, (before, after)


def test_no_leftover_temporaries(soak):
    assert soak["leftover_temporaries"] == {"avatar_dir": [], "server_tmpdir": []}


def test_no_phantom_or_resurrected_avatar(soak):
    assert soak["phantom_avatars"] == [] and soak["resurrected_avatars"] == []


def test_a_full_avatar_disk_answers_a_documented_error(soak):
    if soak["faults"]["disk"] is not None:
        pytest.skip(soak["faults"]["disk"])  # no tmpfs here: nothing was full
    statuses = soak["statuses"]["register_disk_full"]
    # A registration in flight when the worker-kill fault lands ends in a connection error
    # (and is retried); every answer is a documented one, and the full disk's was seen.
    answered = set(statuses) - {"connection_error"}
    assert answered <= {"201", "503", "507"} and "507" in answered, statuses
    assert soak["statuses"]["generate_disk_full"].get("200", 0) >= 1  # no storage needed


def test_idle_connections_cannot_block_a_real_session(soak):
    """Another client's idle connections hold no slot the probe needs: it is not made to
    wait until one of them times out (realtime_start_timeout_s)."""
    ready = soak["faults"]["idle_flood"]["probe_ready_s"]
    assert ready is not None and ready < Settings().realtime_start_timeout_s
