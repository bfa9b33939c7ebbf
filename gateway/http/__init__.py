"""HTTP/JSON beside the gRPC `Bank` API, from the same proto.

`create_app(channel)` builds the aiohttp application on the gateway's
in-process `LocalChannel`, `start_http(app, host, port)` serves it; see `app`
for how, `routes` for what, `local` for the channel.
"""

from gateway.http.app import bound_port, create_app, start_http
from gateway.http.local import LocalChannel

__all__ = ["LocalChannel", "bound_port", "create_app", "start_http"]
