"""The Ray Serve deployment on a real local cluster: two Ray nodes on 127.0.0.1 (one CPU
each, so two replicas of one CPU land on two nodes), the application of
deploy/ray/serve_config.yaml with test-sized arguments (short autoscaling delays), the
avatar store in a real redis-server. Everything is stopped at the end, processes by id.

The tests share one cluster and run in file order: the replicas answer and name
themselves, streamed replies stream, WebSockets are refused with a reason, an avatar
registered through one replica serves generations on every replica while replicas are
added under load and removed after it, and Redis going away gives 503s that end when it
comes back.
"""

from __future__ import annotations

import concurrent.futures
import struct
import time

import pytest
import requests
import websocket
from helpers import ASSETS, FACE_BOX, b64, decode, wav_bytes

from tools import local_ray

SPEECH_2S = wav_bytes(2.0)
FACE = (ASSETS / "face.jpg").read_bytes()
# Generous: two replicas and four other agents share two cores.
DEPLOY_TIMEOUT_S = 420
LOAD_TIMEOUT_S = 300
SCALE_DOWN_TIMEOUT_S = 180
REPLICA = "X-Replica"
STORE_DOWN = "avatar_store_unavailable"


@pytest.fixture(scope="module")
def cluster(untrained_models, redis_server, tmp_path_factory):
    redis_server.start()  # a test before may have stopped it
    redis_server.flush()
    work = tmp_path_factory.mktemp("ray")
    cluster = local_ray.start_cluster(
        work,
        nodes=2,
        cpus_per_node=1,
        LIPSYNC_MODELS_DIR=str(untrained_models),
        LIPSYNC_CACHE_DIR=str(work / "ov-cache"),
        LIPSYNC_AVATAR_STORE=redis_server.url,
        LIPSYNC_AVATAR_DIR="none",  # nothing shared through this host's disk
        LIPSYNC_LOG_LEVEL="warning",
        # How often replicas and proxies report their ongoing requests to the autoscaler.
        RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S="0.5",
        RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S="0.5",
    )
    try:
        local_ray.deploy(
            cluster,
            timeout_s=DEPLOY_TIMEOUT_S,
            num_cpus=1,
            memory_mb=512,
            min_replicas=1,
            max_replicas=2,
            upscale_delay_s=1,
            downscale_delay_s=5,
            look_back_period_s=11,  # > the autoscaler's 10 s metrics interval
            settings={"max_concurrent": 1, "max_queue": 2, "retry_after_s": 1},
        )
        yield cluster
    finally:
        local_ray.stop_cluster(cluster)
        assert not local_ray.cluster_pids(cluster), "processes of the cluster were left"


def register(cluster) -> requests.Response:
    box = ",".join(map(str, FACE_BOX))
    return post(cluster, "/api/avatars", data={"box": box}, files={"image": ("face.jpg", FACE)})


def generate_by_id(cluster, avatar_id: str) -> requests.Response:
    return post(cluster, "/api/generate", json={"avatar_id": avatar_id, "audio": b64(SPEECH_2S)})


def post(cluster, path: str, **kwargs) -> requests.Response:
    return requests.post(cluster.url + path, timeout=300, **kwargs)


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def test_a_replica_answers_probes_and_metrics_and_names_itself(cluster):
    assert len(local_ray.replica_pids(cluster)) == 1  # min_replicas
    ready = requests.get(cluster.url + "/health/ready", timeout=60)
    assert ready.status_code == 200, ready.text
    assert ready.headers[REPLICA].startswith("SERVE_REPLICA::lipsync#")
    assert requests.get(cluster.url + "/health/live", timeout=60).status_code == 200
    metrics = requests.get(cluster.url + "/metrics", timeout=60)
    assert metrics.status_code == 200
    assert 'lipsync_requests_total{method="GET",route="/health/ready",status="200"}' in metrics.text


def test_a_streamed_reply_streams_through_the_proxy(cluster):
    body = {"image": b64(FACE), "box": list(FACE_BOX), "audio": b64(wav_bytes(3.0))}
    started = time.monotonic()
    with requests.post(
        cluster.url + "/api/generate", json={**body, "stream": True}, stream=True, timeout=300
    ) as reply:
        assert reply.status_code == 200, reply.text
        arrivals, chunks = [], []
        for chunk in reply.raw.stream(64 * 1024, decode_content=False):
            arrivals.append(time.monotonic() - started)
            chunks.append(chunk)
    frames = int(reply.headers["X-Num-Frames"])
    assert len(decode(b"".join(chunks))["frames"]) == frames == 75
    # The first bytes (header + first batch) came well before the last frame batch.
    assert len(chunks) >= 3
    assert arrivals[0] < arrivals[-1] - 0.3, arrivals


def test_a_client_that_hangs_up_stops_its_generation(cluster):
    """A whole-file generation of 20 s of speech whose client leaves after 3 s stops at its
    next frame batch (counted as 499) instead of running to its end."""
    body = {"image": b64(FACE), "box": list(FACE_BOX), "audio": b64(wav_bytes(20.0))}
    with pytest.raises(requests.Timeout):
        requests.post(cluster.url + "/api/generate", json=body, timeout=3)
    stopped = 'lipsync_requests_total{method="POST",route="/api/generate",status="499"}'
    wait_for(
        lambda: stopped in requests.get(cluster.url + "/metrics", timeout=60).text, 120, stopped
    )


def test_a_websocket_session_is_refused_with_a_reason(cluster):
    ws = websocket.create_connection(cluster.url.replace("http", "ws") + "/api/stream", timeout=60)
    try:
        frame = ws.recv_frame()
    finally:
        ws.close()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1008
    assert "gunicorn" in frame.data[2:].decode()


def generate_until_done(cluster, avatar_id: str, deadline: float) -> tuple[int, str]:
    """One generation, retried after each 503 overloaded as its Retry-After says:
    (status, replica)."""
    while True:
        reply = generate_by_id(cluster, avatar_id)
        if reply.status_code != 503 or time.monotonic() > deadline:
            assert reply.status_code == 200, reply.text
            assert reply.json()["avatar_id"] == avatar_id
            return reply.status_code, reply.headers[REPLICA]
        assert reply.json()["error"]["code"] == "overloaded", reply.text
        time.sleep(float(reply.headers["Retry-After"]))


def test_an_avatar_serves_every_replica_as_replicas_scale_up_and_down(cluster):
    registered = register(cluster)
    assert registered.status_code in (200, 201), registered.text
    avatar_id = registered.json()["avatar_id"]

    deadline = time.monotonic() + LOAD_TIMEOUT_S
    replicas_seen: set[str] = set()
    # Nodes running a replica at once: the distinct raylets whose child is a replica
    # process (replica_pids leaves out what a replica forks, which carries its title).
    most_nodes = 1
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # Keep four generations in flight until two replicas have answered (and at least 8
        # generations are done); the second replica comes after upscale_delay_s + its start.
        pending = {pool.submit(generate_until_done, cluster, avatar_id, deadline) for _ in range(4)}
        done_count = 0
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=1, return_when="FIRST_COMPLETED"
            )
            most_nodes = max(most_nodes, len(set(local_ray.replica_pids(cluster).values())))
            for future in finished:
                _, replica = future.result()
                replicas_seen.add(replica)
                done_count += 1
                if (len(replicas_seen) < 2 or done_count < 8) and time.monotonic() < deadline:
                    pending.add(pool.submit(generate_until_done, cluster, avatar_id, deadline))
    assert len(replicas_seen) >= 2, replicas_seen
    assert most_nodes == 2  # max_replicas, one per node (one CPU each)
    wait_for(lambda: len(local_ray.replica_pids(cluster)) == 1, SCALE_DOWN_TIMEOUT_S, "scale down")


def answers_until_the_store_refuses(cluster, avatar_id: str, tries: int = 20) -> list[tuple]:
    """Generations by id, one after another, until one is the store's 503: every answer's
    (status, error code or None, Retry-After)."""
    answers = []
    for _ in range(tries):
        reply = generate_by_id(cluster, avatar_id)
        code = None if reply.status_code == 200 else reply.json()["error"]["code"]
        answers.append((reply.status_code, code, reply.headers.get("Retry-After")))
        if code == STORE_DOWN:
            return answers
        time.sleep(0.2)
    raise AssertionError(f"the store never refused: {answers}")


def test_redis_going_away_mid_run_is_503_not_500_and_recovered_from(cluster, redis_server):
    avatar_id = register(cluster).json()["avatar_id"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        clients = [
            pool.submit(answers_until_the_store_refuses, cluster, avatar_id) for _ in range(3)
        ]
        time.sleep(1)  # generations in flight, then Redis goes away under them
        redis_server.stop()
        try:
            answers = [answer for client in clients for answer in client.result()]
            allowed = {(200, None), (503, "overloaded"), (503, STORE_DOWN)}
            assert {(status, code) for status, code, _ in answers} <= allowed, answers
            assert all(int(after) > 0 for status, _, after in answers if status == 503)
            assert register(cluster).status_code == 503
            raw = {"image": b64(FACE), "box": list(FACE_BOX), "audio": b64(SPEECH_2S)}
            assert post(cluster, "/api/generate", json=raw).status_code == 200  # no store needed
        finally:
            redis_server.start()  # empty: the test server keeps nothing on disk
    # The replicas recover by themselves: the avatar is registered again and serves.
    wait_for(lambda: register(cluster).status_code == 201, 60, "registration after Redis")
    assert generate_by_id(cluster, avatar_id).json()["avatar_id"] == avatar_id
