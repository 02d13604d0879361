"""The API's routes, one blueprint per resource."""

from lipsync.server.routes.avatars import avatars
from lipsync.server.routes.generate import generate
from lipsync.server.routes.meta import meta

BLUEPRINTS = (meta, generate, avatars)

__all__ = ["BLUEPRINTS"]
