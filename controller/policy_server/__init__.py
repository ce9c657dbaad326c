"""Serve a controller over a websocket, and use it remotely (``python -m controller.serve``).

* :mod:`.protocol`: msgpack + numpy wire format, request validation, handshake metadata;
* :mod:`.server`: :class:`~.server.ServedPolicy` and :class:`~.server.PolicyServer` (asyncio);
* :mod:`.client`: :class:`~.client.RemoteChunkPolicy`, the in-process chunk policy's interface.

See ``docs/policy_server.md``.
"""
