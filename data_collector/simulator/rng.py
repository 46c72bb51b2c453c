"""Counter-based randomness: the same (seed, stream, index) gives the same number in every process.

Everything the simulator invents is a pure function of the seed and a position (a minute, a knot,
a trade), so a candle five years back costs as much as today's and nothing is precomputed. The
mixer is splitmix64; the array and scalar forms give bit-identical results (wrapping uint64 maths).
Only +, *, floor and rint touch floats downstream, never libm functions whose SIMD and scalar
forms may round differently.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_INV53 = 1.0 / (1 << 53)
_GOLDEN_U = np.uint64(GOLDEN)
_M1_U = np.uint64(_M1)
_M2_U = np.uint64(_M2)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def mix64(x: int) -> int:
    """splitmix64's finaliser on a Python int (taken modulo 2**64)."""
    z = x & MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def stream_key(*parts: object) -> int:
    """A 64-bit key for a named random stream, stable across processes (no ``hash()``)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def hash_at(key: int, index: int) -> int:
    """The 64-bit random value at ``index`` of stream ``key``."""
    return mix64(key + (index * GOLDEN))


def uniform_at(key: int, index: int) -> float:
    """A float in [0, 1) at ``index`` of stream ``key``."""
    return (hash_at(key, index) >> 11) * _INV53


def hash_array(key: int, index: npt.NDArray[np.int64] | npt.NDArray[np.uint64]) -> U64:
    """Vectorised :func:`hash_at` (indices must be non-negative)."""
    # Array (not scalar) uint64 arithmetic wraps silently, which is what splitmix64 wants.
    z = index.astype(np.uint64) * _GOLDEN_U
    z += np.uint64(key & MASK64)
    z ^= z >> _S30
    z *= _M1_U
    z ^= z >> _S27
    z *= _M2_U
    z ^= z >> _S31
    return z


def uniform_array(key: int, index: npt.NDArray[np.int64] | npt.NDArray[np.uint64]) -> F64:
    """Vectorised :func:`uniform_at`."""
    return (hash_array(key, index) >> _S11).astype(np.float64) * _INV53


_LN2 = 0.6931471805599453
# 2**f on [0, 1): Taylor series of exp(f ln 2) to degree 13 (error < 1e-16 relative).
_EXP2_COEFFS = [(_LN2**k) / float(np.prod(np.arange(1, k + 1))) for k in range(14)]


def exp_array(x: F64) -> F64:
    """exp(x) using only +, *, floor and ldexp, so every process and code path agrees bit for bit."""
    y = x * (1.0 / _LN2)
    k = np.floor(y)
    f = y - k
    acc = np.full_like(f, _EXP2_COEFFS[-1])
    for c in reversed(_EXP2_COEFFS[:-1]):
        acc = acc * f + c
    return np.ldexp(acc, k.astype(np.int64))
