"""The design card's Flask entry point: the app factory lives in `lipsync.server.app`.

`create_app()` builds the app (no heavy work at import); `gunicorn app:app` builds one
through the module attribute `app`, on first access. `python app.py` runs the service as
`lipsync serve` does (gunicorn with the settings from LIPSYNC_* variables).
"""

from __future__ import annotations

from typing import Any

from lipsync.server.app import create_app, warm_up

__all__ = ["create_app", "warm_up"]


def __getattr__(name: str) -> Any:
    if name == "app":  # `gunicorn app:app`: the WSGI app, built when asked for
        from lipsync.server.wsgi import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from lipsync.cli import main

    raise SystemExit(main(["serve"]))
