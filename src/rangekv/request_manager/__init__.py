"""The request manager (``rangekv rm``): a stateless HTTP front that routes by an in-memory copy
of the metadata.

* ``app``        — the HTTP handlers and ``main(argv)`` of the process
* ``http_server`` — the HTTP/1.1 server (an asyncio protocol) the handlers run in
* ``routing``    — the routing view (etcd watch or static), the router, the connection pool
* ``http_codec`` — pure decoding/encoding of paths, headers, queries, cursors and bodies
* ``openapi``    — the OpenAPI 3.1 document served at ``/v1/openapi.json``
* ``metrics``    — counters and histograms for ``/metrics``
"""
