"""The OHLCV backfill, in the order a page travels: exchange -> plan -> fetch -> validate -> store.

* :mod:`~data_collector.backfill.exchange`: the ccxt client, its retries and the shared rate limiter
  (:mod:`~data_collector.backfill.rate_limit`).
* :mod:`~data_collector.backfill.plan`: which ranges to fetch, split into pages.
* :mod:`~data_collector.backfill.validate`: every page is checked before it is stored.
* :mod:`~data_collector.backfill.report`: what a run did, pair by pair.
* :mod:`~data_collector.backfill.monitor`: what a run reports to a performance monitor.

The front is :class:`data_collector.optimized_collector.OptimizedDataCollector`.
"""
