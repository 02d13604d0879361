"""The API's routes, one blueprint per resource."""

from lipsync.server.routes.avatars import avatars
from lipsync.server.routes.generate import generate
from lipsync.server.routes.meta import meta
from lipsync.server.web import web

BLUEPRINTS = (meta, generate, avatars, web)

__all__ = ["BLUEPRINTS"]
