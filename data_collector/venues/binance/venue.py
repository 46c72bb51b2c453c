"""What the streamer knows of each venue it speaks: which adapter, and Binance's protocol details.

Three adapters (``kind``): ``binance`` (native, this module and :mod:`.connection`,
:mod:`.order_book`), ``okx`` (native, the :mod:`data_collector.venues.okx` folder) and ``ccxt``
(:mod:`.ccxtpro`: any other ccxt.pro exchange, through its ``watch_*_for_symbols`` methods;
slower, with weaker guarantees).

The venue follows ``exchange.id`` (the ccxt class): ``binance`` streams spot symbols
(``SOL/USDT``) from ``stream.binance.com`` and ``api.binance.com``; ``binanceusdm`` streams
perpetuals (``BTC/USDT:USDT``) from ``fstream.binance.com`` and ``fapi.binance.com``. Everything
that differs between the two lives here, and nowhere else:

- the REST path prefix (``/api/v3`` or ``/fapi/v1``) and the default hosts;
- the channels (futures add ``markPrice``, ``markPrice@1s`` and ``forceOrder``);
- the order-book rule. Spot: the first diff after the snapshot has ``U <= lastUpdateId + 1 <= u``
  and each later one ``U == previous u + 1``. USDⓈ-M (Binance's "How to manage a local order book
  correctly"): drop diffs with ``u < lastUpdateId``, the first has ``U <= lastUpdateId <= u``, and
  each later one carries ``pu`` equal to the previous diff's ``u``;
- the depth snapshot sizes (USDⓈ-M serves 5, 10, 20, 50, 100, 500 or 1000 levels).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from data_collector.errors import UsageError
from data_collector.markets import is_perpetual


@dataclass(frozen=True, slots=True)
class StreamVenue:
    """One venue's protocol details (see the module docstring)."""

    #: ``exchange.id`` that selects it.
    protocol: str
    #: ``spot`` or ``swap`` (the ``market_type`` of the instruments its candles are stored under).
    market_type: str
    #: REST path prefix: ``/api/v3`` or ``/fapi/v1``.
    rest_api: str
    default_rest_url: str
    default_ws_url: str
    #: Channels besides ``kline_<tf>``.
    channels: tuple[str, ...]
    #: Depth diffs chain by ``pu`` (USDⓈ-M) rather than by ``U == previous u + 1`` (spot).
    chained_by_pu: bool
    #: The snapshot sizes ``depth`` serves, smallest first (empty: any up to 5000).
    snapshot_limits: tuple[int, ...] = ()
    #: The adapter: ``binance``, ``okx`` (native) or ``ccxt`` (generic, through ccxt.pro).
    kind: str = "binance"

    def snapshot_limit(self, wanted: int) -> int:
        """The smallest snapshot size the venue serves that holds ``wanted`` levels (else its largest)."""
        if not self.snapshot_limits:
            return wanted
        return next((n for n in self.snapshot_limits if n >= wanted), self.snapshot_limits[-1])

    def check_symbol(self, symbol: str) -> str:
        """``symbol`` if this venue lists markets of its kind, else ``UsageError`` saying where it streams."""
        if self.kind != "binance":  # one OKX or ccxt.pro connection carries spot and swaps alike
            return symbol
        if is_perpetual(symbol) != (self.market_type == "swap"):
            if is_perpetual(symbol):
                raise UsageError(
                    f"{symbol} is a perpetual: stream it with exchange.id 'binanceusdm' "
                    f"(Binance USDⓈ-M futures), not {self.protocol!r}"
                )
            raise UsageError(
                f"{symbol} is a spot symbol: exchange.id {self.protocol!r} streams perpetuals "
                f"only; write {symbol}:{symbol.partition('/')[2]} or use exchange.id 'binance'"
            )
        return symbol


SPOT = StreamVenue(
    protocol="binance",
    market_type="spot",
    rest_api="/api/v3",
    default_rest_url="https://api.binance.com",
    default_ws_url="wss://stream.binance.com:9443",
    channels=("trade", "aggTrade", "bookTicker", "depth"),
    chained_by_pu=False,
)
USDM = replace(
    SPOT,
    protocol="binanceusdm",
    market_type="swap",
    rest_api="/fapi/v1",
    default_rest_url="https://fapi.binance.com",
    default_ws_url="wss://fstream.binance.com",
    channels=(*SPOT.channels, "markPrice", "markPrice@1s", "forceOrder"),
    chained_by_pu=True,
    snapshot_limits=(5, 10, 20, 50, 100, 500, 1000),
)
#: OKX v5 (spot and swaps on one connection): see :mod:`data_collector.venues.okx`.
OKX = StreamVenue(
    protocol="okx",
    market_type="spot",
    rest_api="/api/v5",
    default_rest_url="https://www.okx.com",
    default_ws_url="wss://ws.okx.com:8443/ws/v5",
    channels=("trade", "bookTicker", "ticker", "depth"),
    chained_by_pu=False,
    kind="okx",
)
VENUES: dict[str, StreamVenue] = {v.protocol: v for v in (SPOT, USDM, OKX)}
#: What the generic adapter streams: trades, books (top N, no depth diffs) and klines.
GENERIC_CHANNELS = ("trade", "depth")
ADAPTERS = ("native", "ccxt")


def stream_venue(protocol: str, adapter: str = "native") -> StreamVenue:
    """The venue spoken for ``exchange.id`` ``protocol``: the native adapter where there is one
    (unless ``adapter`` is ``ccxt``), else the generic one if ccxt.pro has the exchange;
    ``UsageError`` for any other."""
    if adapter not in ADAPTERS:
        raise UsageError(f"streaming.adapter must be one of {', '.join(ADAPTERS)}, not {adapter!r}")
    venue = VENUES.get(protocol)
    if venue is not None and adapter == "native":
        return venue
    import ccxt.pro  # only the generic adapter needs it

    if protocol not in ccxt.pro.exchanges:
        raise UsageError(
            f"unknown exchange.id {protocol!r}: the streamer speaks {', '.join(repr(p) for p in VENUES)} "
            "natively and any ccxt.pro exchange (ccxt.pro.exchanges) through the generic adapter"
        )
    return replace(
        OKX,
        protocol=protocol,
        rest_api="",
        default_rest_url="",
        default_ws_url="",
        channels=GENERIC_CHANNELS,
        kind="ccxt",
    )


def venue_for_symbols(symbols: list[str]) -> StreamVenue:
    """The venue a list of canonical markets implies: USDⓈ-M when they are perpetuals."""
    return USDM if symbols and all(is_perpetual(s) for s in symbols) else SPOT
