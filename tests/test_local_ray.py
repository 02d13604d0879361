"""tools/local_ray's view of a cluster's processes, on a stand-in process tree (no Ray): a
"raylet" whose child is titled as a Serve replica, and that replica's fork, which carries
its title (as a replica's child does until it execs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools import local_ray

# The node's raylet: starts one replica process (its command line read from stdin, so that
# the raylet's own has no replica title), then waits.
RAYLET = (
    "import json, subprocess, sys, time; subprocess.Popen(json.load(sys.stdin)); time.sleep(120)"
)
# The replica forks (its child keeps the replica's command line), then both wait.
REPLICA = "import os, time; os.fork(); time.sleep(120)"
REPLICA_TITLE = "ray::ServeReplica:lipsync:lipsync"


def test_a_replicas_fork_is_not_a_replica_on_another_node(tmp_path):
    raylet_binary = tmp_path / "raylet"
    raylet_binary.symlink_to(sys.executable)
    cluster = local_ray.LocalRayCluster("127.0.0.1:0", tmp_path, {"RAY_TMPDIR": str(tmp_path)})
    replica = [sys.executable, "-c", REPLICA, REPLICA_TITLE]
    raylet = subprocess.Popen(
        [str(raylet_binary), "-c", RAYLET],
        stdin=subprocess.PIPE,
        env={**os.environ, **cluster.env},
        start_new_session=True,
    )
    try:
        with raylet.stdin:
            raylet.stdin.write(json.dumps(replica).encode())
        deadline = time.monotonic() + 30
        while len(local_ray.cluster_pids(cluster)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = local_ray.cluster_pids(cluster)
        titled = {
            p for p in pids if REPLICA_TITLE.encode() in Path(f"/proc/{p}/cmdline").read_bytes()
        }
        assert len(pids) == 3 and len(titled) == 2  # the raylet, the replica and its fork
        replicas = local_ray.replica_pids(cluster)
        assert set(replicas.values()) == {raylet.pid}  # one node
        assert len(replicas) == 1 and set(replicas) < titled  # the fork is not counted
    finally:
        os.killpg(raylet.pid, signal.SIGKILL)
        raylet.wait()
