"""A local Ray cluster of several nodes on 127.0.0.1 with the service deployed by Ray Serve
(tests and benchmarks): `ray start --head`, then `ray start --address` per extra node,
every port free and chosen here, everything under one temporary directory; `serve run`
with deploy/ray/serve_config.yaml's application and test-sized arguments.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lipsync.server.ray_serve import PROXY_ENV
from tools.local_server import free_port, free_ports

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve_config.yaml"
BIN = Path(sys.executable).parent


@dataclass
class LocalRayCluster:
    address: str  # the head's GCS, host:port
    work_dir: Path
    env: dict[str, str]
    url: str = ""  # Serve's HTTP proxy, once deployed
    logs: list[Path] = field(default_factory=list)


def _run(args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({done.returncode}):\n{log.read_text()}")


# Ports a node would otherwise take at fixed defaults (the nodes share this host).
NODE_PORT_OPTIONS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def _node_ports(ports: list[int]) -> list[str]:
    """One node's port options, taking its ports from `ports` (distinct free ports)."""
    return [f"{option}={ports.pop()}" for option in NODE_PORT_OPTIONS]


def start_cluster(
    work_dir: Path, nodes: int = 2, cpus_per_node: float = 2, timeout_s: float = 180, **env: str
) -> LocalRayCluster:
    """`nodes` Ray nodes on 127.0.0.1 with `cpus_per_node` CPUs each; `env` (LIPSYNC_*)
    reaches every replica through the nodes' environment."""
    work_dir.mkdir(parents=True, exist_ok=True)
    temp_dir = Path("/tmp") / f"ray-{os.getpid()}-{free_port()}"  # sockets: short paths
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": str(temp_dir),
        "TMPDIR": str(work_dir),
        **PROXY_ENV,
        **env,
    }
    # Every port of the cluster chosen at once: ports picked one by one could repeat.
    ports = free_ports(3 + nodes * len(NODE_PORT_OPTIONS))
    port = ports.pop()
    cluster = LocalRayCluster(f"127.0.0.1:{port}", work_dir, environment)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        f"--ray-client-server-port={ports.pop()}",
        f"--object-store-memory={200 * 1024 * 1024}",
        *common,
        *_node_ports(ports),
    ]
    try:
        _run(head, environment, work_dir / "ray-start.log", timeout_s)
        for _ in range(nodes - 1):
            worker = [
                str(BIN / "ray"),
                "start",
                f"--address={cluster.address}",
                f"--object-store-memory={200 * 1024 * 1024}",
                *common,
                *_node_ports(ports),
            ]
            _run(worker, environment, work_dir / "ray-start.log", timeout_s)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def serve_config(http_port: int, **args: Any) -> dict:
    """deploy/ray/serve_config.yaml with the proxy on 127.0.0.1:`http_port` of the head
    only (nodes share this host) and the application's `args` updated."""
    config = copy.deepcopy(yaml.safe_load(SERVE_CONFIG.read_text()))
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app = config["applications"][0]
    settings = {**app["args"].get("settings", {}), **args.pop("settings", {})}
    app["args"] = {**app["args"], **args, "settings": settings}
    return config


def deploy(cluster: LocalRayCluster, timeout_s: float = 300, **args: Any) -> str:
    """Deploy the application with `serve run` (non-blocking) and wait until it answers
    `/health/ready`; returns its URL. Deploying again updates the application (Serve keeps
    the HTTP port it started with)."""
    http_port = int(cluster.url.rsplit(":", 1)[1]) if cluster.url else free_port()
    path = cluster.work_dir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(serve_config(http_port, **args)))
    command = [str(BIN / "serve"), "run", "--non-blocking", f"--address={cluster.address}"]
    _run([*command, str(path)], cluster.env, cluster.work_dir / "serve-run.log", timeout_s)
    cluster.url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(cluster.url + "/health/ready", timeout=10):
                return cluster.url
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise TimeoutError(f"the Serve application was not ready within {timeout_s:g} s")


def cluster_pids(cluster: LocalRayCluster) -> set[int]:
    """Processes of this cluster: those whose environment has its own RAY_TMPDIR (every
    process `ray start` launched inherits it; other Ray clusters on the host do not)."""
    marker = f"RAY_TMPDIR={cluster.env['RAY_TMPDIR']}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return pids


def stop_cluster(cluster: LocalRayCluster, grace_s: float = 10) -> None:
    """Stop this cluster's processes (SIGTERM, then SIGKILL after `grace_s`), by their ids,
    and remove its session directory."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(cluster)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
    shutil.rmtree(cluster.env["RAY_TMPDIR"], ignore_errors=True)


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, parent pid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _zombie(pid: int) -> bool:
    try:
        return _stat(pid)[0] == "Z"
    except (OSError, IndexError):
        return False


def _command(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def replica_pids(cluster: LocalRayCluster) -> dict[int, int]:
    """The cluster's Serve replica processes (Ray titles them `ray::ServeReplica:...`),
    each with its parent: the raylet of the node it runs on. A process that a replica forks
    carries the replica's title until it execs (seen while a replica starts); its parent is
    the replica, not a raylet, so it is left out (it once made two replicas look like
    replicas on three nodes)."""
    commands, parents = {}, {}
    for pid in cluster_pids(cluster):
        with contextlib.suppress(OSError, IndexError, ValueError):
            commands[pid], parents[pid] = _command(pid), int(_stat(pid)[1])
    raylets = {pid for pid, command in commands.items() if command[0].endswith(b"/raylet")}
    return {
        pid: parents[pid]
        for pid, command in commands.items()
        if parents[pid] in raylets and b"ServeReplica:" in b" ".join(command)
    }
