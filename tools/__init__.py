"""Test and benchmark harness, used from the source tree only (not installed): the real
gunicorn server on a free port (local_server), a private redis-server (redis_server) and a
local two-node Ray cluster (local_ray)."""
