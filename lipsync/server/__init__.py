"""The HTTP layer: routes, request parsing, admission, observability, the API description and
the gunicorn entry points."""
