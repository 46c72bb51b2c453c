"""Binance counts request weight per client IP: the simulator keeps one budget per source address.

Clients bind their own loopback source address (127.0.0.2, 127.0.0.3), as hosts behind distinct IPs
would; ccxt takes the aiohttp session (``session=`` in its config), so the real client speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import ccxt.async_support as ccxt
import pytest

from data_collector.markets import MINUTE_MS
from data_collector.simulator import SimulatedExchange

#: Weight of one ``klines?limit=1`` (Binance spot: 2); the budget holds five of them.
KLINES_WEIGHT = 2
LIMIT = 5 * KLINES_WEIGHT

Client = Callable[[str], Awaitable[ccxt.binance]]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(
        symbols=["BTC/USDT"],
        seed=1,
        weight_limit=LIMIT,
        perpetuals=["BTC/USDT:USDT"],
        futures_weight_limit=LIMIT,
    ) as s:
        # A frozen clock a second into a minute: no real minute boundary can split the test.
        s.clock.freeze((s.clock.now_ms() // MINUTE_MS + 1) * MINUTE_MS + 1000)
        yield s


@pytest.fixture
async def client(sim: SimulatedExchange) -> AsyncIterator[Client]:
    """``await client("127.0.0.2")``: a ccxt binance whose requests leave from that address."""
    async with AsyncExitStack() as stack:

        async def make(source_ip: str) -> ccxt.binance:
            connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            ex = ccxt.binance({**sim.ccxt_config(), "enableRateLimit": False, "session": session})
            stack.push_async_callback(ex.close)
            return ex

        yield make


async def _klines(ex: ccxt.binance) -> int:
    """One weighed request; the weight the simulator says this client's address has used."""
    await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "1m", "limit": 1})
    return int(ex.last_response_headers["X-MBX-USED-WEIGHT-1M"])


async def test_two_addresses_have_two_budgets(sim: SimulatedExchange, client: Client) -> None:
    a, b = await client("127.0.0.2"), await client("127.0.0.3")
    used_a = [await _klines(a) for _ in range(5)]
    assert used_a == [2, 4, 6, 8, 10]
    with pytest.raises(ccxt.DDoSProtection):  # 127.0.0.2's minute is spent: 429
        await _klines(a)
    # 127.0.0.3's budget is whole: its header counts only its own weight, and it is never refused.
    assert [await _klines(b) for _ in range(5)] == [2, 4, 6, 8, 10]
    stats = sim.stats()
    assert stats["used_weight_1m_by_ip"] == {"127.0.0.2": LIMIT, "127.0.0.3": LIMIT}
    assert stats["429"] == 1
    # The first address holds sim.limiter (what single-client tests read); the other has its own.
    assert sim.budgets.get("127.0.0.2") is sim.limiter
    other = sim.budgets.get("127.0.0.3")
    assert other is not None and other is not sim.limiter and other.limit == LIMIT


async def test_one_address_shares_one_budget(sim: SimulatedExchange, client: Client) -> None:
    a1, a2 = await client("127.0.0.2"), await client("127.0.0.2")
    assert [await _klines(a1), await _klines(a2), await _klines(a1), await _klines(a2)] == [2, 4, 6, 8]
    assert await _klines(a2) == LIMIT
    with pytest.raises(ccxt.DDoSProtection):  # a1 finds the minute its neighbour spent
        await _klines(a1)
    assert sim.stats()["used_weight_1m_by_ip"] == {"127.0.0.2": LIMIT}


async def test_futures_budgets_are_per_address_too(sim: SimulatedExchange) -> None:
    url = sim.futures_rest_url + "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1"
    used: dict[str, list[int]] = {}
    for ip in ("127.0.0.2", "127.0.0.3"):
        connector = aiohttp.TCPConnector(local_addr=(ip, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(LIMIT + 1):  # futures klines limit=1 weighs 1
                async with http.get(url) as resp:
                    used.setdefault(ip, []).append(resp.status)
    assert used == {ip: [200] * LIMIT + [429] for ip in ("127.0.0.2", "127.0.0.3")}
    stats = sim.stats()
    assert stats["futures"]["used_weight_1m_by_ip"] == {"127.0.0.2": LIMIT, "127.0.0.3": LIMIT}
    assert sim.limiter.current_used() == 0  # the spot budgets are untouched
