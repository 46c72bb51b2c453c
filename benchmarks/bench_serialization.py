"""json vs orjson vs msgpack for a trade, a candle and a batch of 1,000 candles."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from benchmarks.harness import BenchContext, Row, Table

NAME = "serialization"
DESCRIPTION = "encode/decode speed and size: json (baseline), orjson, msgpack"

TRADE = {
    "e": "trade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "t": 12345,
    "p": "0.001",
    "q": "100",
    "T": 1672515782136,
    "m": True,
    "M": True,
}
CANDLE = [1706630400000, 43519.34, 43936.0, 43171.0, 43488.71, 20.55495]
BATCH = [
    [1706630400000 + i * 60_000, 43519.34 + i, 43936.0, 43171.0, 43488.71, 20.55495 + i] for i in range(1000)
]

CODECS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "json": (lambda o: json.dumps(o).encode(), json.loads),
    "orjson": (orjson.dumps, orjson.loads),
    "msgpack": (msgpack.packb, msgpack.unpackb),
}


def _rate(fn: Callable[[], object], budget_s: float) -> float:
    n, started = 0, time.perf_counter()
    while True:
        for _ in range(100):
            fn()
        n += 100
        elapsed = time.perf_counter() - started
        if elapsed >= budget_s:
            return n / elapsed


async def run(ctx: BenchContext) -> list[Table]:
    budget = 0.05 if ctx.quick else 0.5
    tables = []
    for label, obj in (("trade", TRADE), ("candle", CANDLE), ("1,000 candles", BATCH)):
        enc_t = Table(f"Serialisation, {label}: encode")
        dec_t = Table(f"Serialisation, {label}: decode")
        sizes = []
        for name, (encode, decode) in CODECS.items():
            data = encode(obj)
            sizes.append(f"{name} {len(data):,} B")
            enc = functools.partial(encode, obj)
            dec = functools.partial(decode, data)
            enc_t.add(
                Row(name, [_rate(enc, budget) for _ in range(ctx.repeats)], "ops/s", baseline=name == "json")
            )
            dec_t.add(
                Row(name, [_rate(dec, budget) for _ in range(ctx.repeats)], "ops/s", baseline=name == "json")
            )
        enc_t.notes.append("size: " + ", ".join(sizes))
        tables += [enc_t, dec_t]
    return tables
