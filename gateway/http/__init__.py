"""HTTP/JSON beside the gRPC `Bank` API, from the same proto.

`create_app(bank_target)` builds the aiohttp application, `start_http(app,
host, port)` serves it; see `app` for how, `routes` for what.
"""

from gateway.http.app import bound_port, create_app, start_http

__all__ = ["bound_port", "create_app", "start_http"]
