"""Hash slots: where a unit falls in a layer, identically in Python, Spark and any reader.

``slot = floor_mod(int64(XXH64(utf8(salt + ":" + unit_id), seed=42)), 10000)``: the 64-bit digest
is read as a *signed* integer and reduced with a floor modulo, which is exactly what Spark's
``pmod(xxhash64(concat(salt, ':', unit_id)), 10000)`` computes (Spark's xxhash64 uses seed 42).
An unsigned ``%`` on the raw digest would disagree for half of all ids.

Usage:
    >>> slot("checkout-2026", "u00000042")
    5047
    >>> 0 <= slot("any-salt", "any unit") < SLOTS
    True
"""

from __future__ import annotations

import xxhash

#: Slots per layer: 0.01% of traffic granularity (seed 002).
SLOTS = 10_000
#: Spark's xxhash64 seed; using it makes the Python and JVM hashes identical.
SPARK_XXHASH_SEED = 42
_TWO_64 = 1 << 64
_TWO_63 = 1 << 63


def slot(salt: str, unit_id: str) -> int:
    """The unit's slot in ``[0, SLOTS)`` for a layer with this salt."""
    digest = xxhash.xxh64_intdigest(f"{salt}:{unit_id}".encode(), seed=SPARK_XXHASH_SEED)
    signed = digest - _TWO_64 if digest >= _TWO_63 else digest
    return signed % SLOTS  # Python's % is a floor modulo, like Spark's pmod
