"""The streamer's OKX v5 adapter: everything OKX-specific about streaming lives in this folder.

- :mod:`.protocol`: endpoints (``/ws/v5/public``, ``/ws/v5/business``), instrument ids, the
  channel map, ``op: subscribe`` messages and the payload -> event normalisers;
- :mod:`.book`: the ``books`` rules (``seqId``/``prevSeqId`` continuity and the CRC32 checksum of
  the best 25 levels, verified on every message) and the resync on a break;
- :mod:`.connection`: one OKX WebSocket (subscribe, text ``ping``/``pong`` keepalive, routing).
"""
