"""Ray Serve deployment of the service, for clusters: `serve run deploy/ray/serve_config.yaml`.

Each replica is one Ray actor holding the same Flask app and engine as a gunicorn worker
(`create_app`, models compiled at start), served through `asgi_bridge.WsgiOnAsgi` on
Serve's HTTP ingress. OpenVINO's threads are matched to the CPUs Ray gave the replica
(`num_cpus` in `ray_actor_options` -> `LIPSYNC_INFERENCE_THREADS`). Every answer names its
replica in `X-Replica`; `/health/ready` and `/metrics` are the answering replica's.

Autoscaling follows what limits this service, busy generations: the target of ongoing
requests per replica is its generation slots (`LIPSYNC_MAX_CONCURRENT`), so replicas are
added as soon as requests queue up; a replica takes at most its slots and queue
(`LIPSYNC_MAX_QUEUE`) plus `PROBE_HEADROOM`, so health probes and metric scrapes get
through while it is busy, and a request beyond its queue reaches the app's admission
check and is refused with the usual `503 overloaded` + `Retry-After`. Serve's proxies
must route by load, not by node (`PROXY_ENV` on every node). Requests waiting in Serve's
proxy are bounded too (`max_queued_requests`; beyond: Serve's own 503 + Retry-After).

Real-time WebSocket sessions (`/api/stream`) are not served here: the upgrade is accepted
and closed with 1008 and a reason; they need the gunicorn deployment (README).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from lipsync.server.asgi_bridge import WsgiOnAsgi
from lipsync.settings import Settings

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "lipsync"
REPLICA_HEADER = "X-Replica"
# Requests a replica takes beyond its generation slots and queue: health probes, metric
# scrapes, and the excess generation that the admission check refuses with 503.
PROBE_HEADROOM = 2
# Environment of every Ray node (Serve's proxies read it): route each request to the less
# busy of two replicas wherever they are. Serve's default prefers the proxy's own node
# until that replica is at max_ongoing_requests, which the headroom above never reaches
# before its admission check refuses: the other nodes' replicas would stay idle.
PROXY_ENV = {
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    "RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING": "0",
}
# Native threads running requests per replica beyond its slots and queue (probes, 503s).
SPARE_THREADS = 8
WEBSOCKET_REASON = "real-time sessions (/api/stream) need the gunicorn deployment"


class ScaleOptions(BaseModel):
    """The application's arguments (`args:` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(2.0, gt=0, description="CPUs per replica (one engine each)")
    memory_mb: int = Field(1536, gt=0, description="memory Ray reserves per replica")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(120.0, ge=0)
    # Ongoing requests are averaged over this window; longer than Serve's 10 s metrics interval.
    look_back_period_s: float = Field(30.0, gt=10)
    # Requests waiting in each Serve proxy for a replica; beyond: Serve's 503.
    max_queued_requests: int = Field(64, ge=1)
    # Settings of every replica (field names of lipsync.settings.Settings), over LIPSYNC_*.
    settings: dict[str, Any] = Field(default_factory=dict)


def replica_threads(num_cpus: float) -> int:
    """OpenVINO threads for a replica given `num_cpus` CPUs (at least one)."""
    return max(1, math.floor(num_cpus))


def deployment_options(settings: Settings, scale: ScaleOptions) -> dict[str, Any]:
    """Serve deployment options matched to the replicas' admission limits."""
    per_replica = settings.max_concurrent + settings.max_queue
    return {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {
            "num_cpus": scale.num_cpus,
            "memory": scale.memory_mb * 1024 * 1024,
        },
        "max_ongoing_requests": per_replica + PROBE_HEADROOM,
        "max_queued_requests": scale.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": settings.retry_after_s},
        "autoscaling_config": {
            "min_replicas": scale.min_replicas,
            "initial_replicas": scale.min_replicas,
            "max_replicas": max(scale.max_replicas, scale.min_replicas),
            "target_ongoing_requests": settings.max_concurrent,
            "upscale_delay_s": scale.upscale_delay_s,
            "downscale_delay_s": scale.downscale_delay_s,
            "look_back_period_s": scale.look_back_period_s,
        },
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": settings.request_timeout_s,
    }


@serve.ingress()
class LipSyncReplica:
    """One replica: settings, the Flask app and its engine (models compiled at start)."""

    def __init__(self, settings: dict[str, Any], num_cpus: float) -> None:
        from lipsync.server.app import create_app, warm_up
        from lipsync.util import configure_logging

        overrides = {"inference_threads": replica_threads(num_cpus), **settings}
        self.settings = Settings.load(overrides)
        configure_logging(level=self.settings.log_level)
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        self.flask = create_app(settings=self.settings)
        try:
            warm_up(self.flask)
        except Exception:  # a missing model must not stop the replica: /health reports it
            logger.exception("model warm-up failed")
        logger.info(
            "replica %s ready: %d OpenVINO threads", self.replica, self.settings.inference_threads
        )

    def __serve_build_asgi_app__(self) -> WsgiOnAsgi:
        s = self.settings
        return WsgiOnAsgi(
            self.flask,
            max_body_bytes=s.max_body_bytes,
            threads=s.max_concurrent + s.max_queue + SPARE_THREADS,
            headers=[(REPLICA_HEADER, self.replica)],
            buffer_chunks=s.stream_buffer_chunks,
            websocket_reason=WEBSOCKET_REASON,
        )


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder (`import_path: lipsync.server.ray_serve:build_app`)."""
    scale = ScaleOptions.model_validate(args or {})
    settings = Settings.load(scale.settings)  # validated once here, with LIPSYNC_* of the driver
    deployment = serve.deployment(**deployment_options(settings, scale))(LipSyncReplica)
    return deployment.bind(scale.settings, scale.num_cpus)
