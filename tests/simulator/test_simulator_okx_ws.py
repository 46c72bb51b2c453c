"""Issue 14, acceptance 1 (WebSocket): the real ``ccxt.pro.okx`` against the simulator's OKX venue.

ccxt.pro okx (4.5) checks ``seqId``/``prevSeqId`` but not the ``books`` checksum; the client here
adds OKX's documented checksum check on ccxt's own book, so a wrong checksum (or a wrong book)
raises ccxt's ``ChecksumError`` as a verifying client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt
import ccxt.pro as ccxtpro
import pytest

from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support.ccxt_clients import ccxt_client
from tests.support.okx_truth import model_candles, model_trades
from tests.support.waiting import wait_for

SPOT = ["BTC/USDT", "SOL/USDT"]
SWAP = "BTC/USDT:USDT"


class CheckedOkx(ccxtpro.okx):  # type: ignore[misc]
    """ccxt.pro okx plus OKX's checksum rule: CRC32 (signed) of ``bid:size:ask:size:...`` over
    the best 25 levels of each side, interleaved, checked on every snapshot and update."""

    checked = 0

    def handle_order_book_message(
        self, client: Any, message: Any, orderbook: Any, messageHash: str, market: Any = None
    ) -> Any:
        result = super().handle_order_book_message(client, message, orderbook, messageHash, market)
        if messageHash not in client.subscriptions or "checksum" not in message:
            return result
        bids, asks = orderbook["bids"], orderbook["asks"]
        parts: list[str] = []
        for i in range(25):
            if i < len(bids):
                parts += [self.number_to_string(bids[i][0]), self.number_to_string(bids[i][1])]
            if i < len(asks):
                parts += [self.number_to_string(asks[i][0]), self.number_to_string(asks[i][1])]
        if self.crc32(":".join(parts), True) != message["checksum"]:
            symbol = orderbook["symbol"]
            del client.subscriptions[messageHash]
            del self.orderbooks[symbol]
            client.reject(
                ccxt.ChecksumError(self.id + " " + self.orderbook_checksum_message(symbol)), messageHash
            )
        else:
            self.checked += 1
        return result


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(symbols=SPOT, seed=42, gaps={}, okx=OkxSettings(swaps=["BTC/USDT"])) as s:
        yield s


@pytest.fixture
async def pro(sim: SimulatedExchange) -> AsyncIterator[Any]:
    async with ccxt_client(CheckedOkx, sim.okx_ccxt_config()) as ex:
        yield ex


async def test_okx_watch_trades_equal_generator(sim: SimulatedExchange, pro: Any) -> None:
    start = sim.clock.now_ms()
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while len(seen) < 5 and time.monotonic() < deadline:
        for t in await pro.watch_trades("SOL/USDT"):
            seen[t["id"]] = t
    assert len(seen) >= 5
    truth = {t["id"]: t for t in model_trades(sim, "SOL/USDT", start - 1000, sim.clock.now_ms() + 1)}
    for tid, t in seen.items():
        assert {
            "id": tid,
            "price": t["price"],
            "amount": t["amount"],
            "ts": t["timestamp"],
            "side": t["side"],
        } == truth[tid]
    ids = sorted(int(i) for i in seen)
    assert ids == list(range(ids[0], ids[-1] + 1)), "trades went missing between pushes"


@pytest.mark.parametrize("symbol", ["BTC/USDT", SWAP])
async def test_okx_watch_ohlcv_closes_into_the_generators_candle(
    sim: SimulatedExchange, pro: Any, symbol: str
) -> None:
    """The forming candle is pushed; once the minute turns (clock moved on), the pushed closed
    candle equals the generator's, base volume included."""
    first = await pro.watch_ohlcv(symbol, "1m")
    open_ms = first[-1][0]
    sim.clock.advance(60_000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        candles = await pro.watch_ohlcv(symbol, "1m")
        if candles[-1][0] > open_ms:
            break
    closed = [c for c in pro.ohlcvs[symbol]["1m"] if c[0] == open_ms][0]
    assert sim.okx.venue.ohlcv(symbol, "1m", open_ms, open_ms + 1)[0][8] == "1"
    assert closed == model_candles(sim, symbol, "1m", open_ms, open_ms + 1)[0]


async def _watch_books(sim: SimulatedExchange, pro: Any, symbol: str, seconds: float) -> None:
    inst = sim.okx.venue.instrument(symbol)
    deadline = time.monotonic() + seconds
    updates = 0
    while time.monotonic() < deadline:
        book = await pro.watch_order_book(symbol)
        updates += 1
        if book["nonce"] == inst.book.update_id:  # the simulator's book has not moved since
            bids, asks = sim.okx.venue.levels(inst, 25)
            assert book["bids"][:25] == [[float(p), float(q)] for p, q, *_ in bids]
            assert book["asks"][:25] == [[float(p), float(q)] for p, q, *_ in asks]
    assert updates >= 2 * seconds  # the book moves every 100 ms; a loaded machine may skip ticks
    assert pro.checked >= updates


@pytest.mark.parametrize("symbol", ["BTC/USDT", SWAP])
async def test_okx_watch_order_book_checksums_hold(sim: SimulatedExchange, pro: Any, symbol: str) -> None:
    await _watch_books(sim, pro, symbol, 3.0)


@pytest.mark.slow
async def test_okx_watch_order_book_30s(sim: SimulatedExchange, pro: Any) -> None:
    await asyncio.gather(_watch_books(sim, pro, "BTC/USDT", 30.0), _watch_books(sim, pro, SWAP, 30.0))


@pytest.mark.parametrize(
    ("fault", "symbol", "error"),
    [
        ("corrupt_checksum", "BTC/USDT", ccxt.ChecksumError),  # the checksum check above
        ("skip_seq", "SOL/USDT", ccxt.InvalidNonce),  # ccxt.pro's own prevSeqId check
        ("corrupt_checksum", SWAP, ccxt.ChecksumError),
    ],
)
async def test_okx_book_faults_raise(
    sim: SimulatedExchange, pro: Any, fault: str, symbol: str, error: type
) -> None:
    """A corrupted checksum and a lost update (its ``prevSeqId`` unseen) each fail the watch."""
    await pro.watch_order_book(symbol)
    getattr(sim.okx.hub, fault)(sim.okx.venue.instrument(symbol).inst_id)
    with pytest.raises(error):
        for _ in range(100):
            await pro.watch_order_book(symbol)


async def _raw(sim: SimulatedExchange, path: str) -> tuple[aiohttp.ClientSession, Any]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(sim.okx.ws_url + path, autoping=False)
    return http, ws


async def test_okx_ws_protocol_acks_errors_ping_and_idle_drop(sim: SimulatedExchange) -> None:
    http, ws = await _raw(sim, "/public")
    try:
        await ws.send_str(
            json.dumps({"op": "subscribe", "args": [{"channel": "tickers", "instId": "BTC-USDT"}]})
        )
        ack = json.loads((await ws.receive(timeout=5)).data)
        assert ack["event"] == "subscribe" and ack["arg"] == {"channel": "tickers", "instId": "BTC-USDT"}
        push = json.loads((await ws.receive(timeout=5)).data)
        assert push["arg"]["channel"] == "tickers" and float(push["data"][0]["bidPx"]) > 0
        await ws.send_str("ping")
        while (msg := await ws.receive(timeout=5)).data != "pong":
            json.loads(msg.data)
        # Candles live on the business endpoint: asking the public one is error 60018.
        await ws.send_str(
            json.dumps({"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]})
        )
        while "event" not in (reply := json.loads((await ws.receive(timeout=5)).data)):
            pass
        assert reply["event"] == "error" and reply["code"] == "60018"
        await ws.send_str(
            json.dumps({"op": "unsubscribe", "args": [{"channel": "tickers", "instId": "BTC-USDT"}]})
        )
        # Silence both ways for idle_timeout_s (OKX: 30 s; 1 s here): the server drops us.
        sim.okx.hub.idle_timeout_s = 1.0
        while (msg := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    finally:
        await ws.close()
        await http.close()


async def test_okx_ws_faults_malformed_drop_stall(sim: SimulatedExchange) -> None:
    http, ws = await _raw(sim, "/public")
    try:
        await ws.send_str(
            json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]})
        )
        assert json.loads((await ws.receive(timeout=5)).data)["event"] == "subscribe"
        assert json.loads((await ws.receive(timeout=5)).data)["action"] == "snapshot"
        sim.okx.hub.malformed()
        while True:
            text = (await ws.receive(timeout=5)).data
            try:
                json.loads(text)
            except ValueError:
                break
        loop = asyncio.get_running_loop()
        sim.okx.hub.stall(1.0)
        stall_end = loop.time() + 1.0
        stalled_at = sim.okx.venue.clock.now_ms()
        before = sim.okx.hub.sent["books"]
        # The market goes on during a stall; its frames are held, and arrive after it.
        await wait_for(lambda: sim.okx.hub.sent["books"] > before, 5, "book updates built during the stall")
        while int(json.loads((await ws.receive(timeout=5)).data)["data"][0]["ts"]) <= stalled_at:
            pass  # what was in flight before the stall
        assert loop.time() >= stall_end - 0.01, "a book update was delivered during the stall"
        assert sim.okx.hub.drop_all() == 1
        while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            pass  # what was in flight before the drop
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    finally:
        await ws.close()
        await http.close()


async def test_okx_watch_ticker_and_bids_asks(sim: SimulatedExchange, pro: Any) -> None:
    ticker = await pro.watch_ticker("BTC/USDT")
    assert ticker["symbol"] == "BTC/USDT" and 0 < ticker["bid"] < ticker["ask"]
    quotes = await pro.watch_bids_asks(["SOL/USDT"])
    sol = quotes["SOL/USDT"]
    assert 0 < sol["bid"] < sol["ask"]


async def test_okx_tick_writes_its_frames_and_counts_the_tape_once(
    sim: SimulatedExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick's frames leave in that tick, as the Binance hub writes them (not one writer-task
    hop later, stamped a tick earlier), and the synthetic trades' ids are counted from the model
    once per instrument, not on every tick (that doubled a tick's time, and every frame's age)."""
    hub = sim.okx.hub
    hub.ws_rate = 1000.0
    http, ws = await _raw(sim, "/public")
    try:
        await ws.send_str(
            json.dumps({"op": "subscribe", "args": [{"channel": "trades", "instId": "SOL-USDT"}]})
        )
        assert json.loads((await ws.receive(timeout=5)).data)["event"] == "subscribe"
        assert json.loads((await ws.receive(timeout=5)).data)["arg"]["channel"] == "trades"
        pump = hub._task
        assert pump is not None
        pump.cancel()  # tick by hand from here
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        counted: list[int] = []
        market = sim.okx.venue.instruments["SOL-USDT"].market
        monkeypatch.setattr(market, "trades_before", lambda minute: counted.append(minute) or 0)
        (conn,) = hub.connections
        before = hub.trades_sent["SOL-USDT"][0]
        stamp = sim.clock.now_ms()
        await wait_for(lambda: sim.clock.now_ms() >= stamp + 5, 5, "5 ms of trades to fall due")
        hub.tick(asyncio.get_running_loop().time())
        assert hub.trades_sent["SOL-USDT"][0] > before, "the tick built no trades"
        assert conn.queue.empty(), "the tick left its frames for the writer task"
        assert counted == [], "the tick counted the model's trades again"
        while int((push := json.loads((await ws.receive(timeout=5)).data))["data"][0]["ts"]) < stamp + 5:
            pass
        assert push["arg"]["channel"] == "trades"
    finally:
        await ws.close()
        await http.close()
