"""Authentication and authorization of the public API: API keys (`keys`),
the one permission table (`permissions`), the gRPC interceptor that
authenticates and rate-limits every `Bank` call (`interceptor`), the per-RPC
ownership checks of the handlers (`guard`), the hash-chained audit log
(`audit`) and the admin RPCs (`admin`).
"""
