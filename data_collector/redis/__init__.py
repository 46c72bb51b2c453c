"""Everything the project says about Redis: URLs, key names and how every client is built.

* :mod:`~data_collector.redis.url`: the one check every ``redis.url`` passes.
* :mod:`~data_collector.redis.keys`: every key name the project writes.
* :mod:`~data_collector.redis.client`: the one factory for Redis clients and connections (timeouts,
  no retries), used by the streamer, the cache managers, the heartbeat and the health check.

None of these modules imports ``utils``: ``utils`` builds on them.
"""
