"""Real-time lip-sync over a WebSocket (/api/stream): protocol, session, route."""
