"""Review of held transfers and the risk officers' alerts (issue #7, part 2).

`desk.ReviewDesk` is the one entry point the risk engine calls for a REVIEW
decision (`hold`) and the officers' service calls to decide (`review`);
`service` and `http` serve the `Risk` API over gRPC and HTTP/JSON;
`testhook` is a staff/test-only way to force REVIEW without the engine.
"""
