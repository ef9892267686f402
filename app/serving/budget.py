"""One memory budget for the requests in flight, decided before their bytes are parsed.

A request's peak memory is set by how many values it carries, and a JSON body says how
many only once it is read. So admission goes in steps, each against the same budget:

1. before the body is read: its ``Content-Length`` (a chunked body: each chunk as it
   arrives), because the body itself is held while it streams in;
2. once it is read, before it is parsed: the body plus ``PARSE_BYTES_PER_VALUE`` times an
   upper bound on its values (commas and closing brackets), which covers the parser's
   working memory, the parsed float32 series and, later, the outputs;
3. once it is parsed: the exact cost of the rest of its life, ``result_bytes``. For a
   float32 request without a history this is less than step 2 held, so the step only
   gives memory back; float64 values (twice the bytes) and a history (the series copied
   after it) can need more, which is taken as in step 2 (413 or 503).

A request that cannot get its share now is answered 503 with ``Retry-After``; one that
could never fit, even alone, is answered 413. Everything is released when the last
byte of the response is sent or the request fails. The figures per value are measured
in ``benchmarks/README.md`` ("Memory budget"); what the budget does not cover (the
process at idle, one batch's padded tensors) is the fixed part of the memory sizing in
the README.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT32 = 4
FLOAT64 = 8
# Working memory per value while a JSON body is parsed, measured at under 40 bytes (the
# simdjson tape of a span, its float64 buffer, the float32 series); rounded up, and at
# least the whole result cost of a float32 request, so that its step 3 never needs more
# than step 2 held.
PARSE_BYTES_PER_VALUE = 48
# A response is encoded and sent in chunks of this size; a request holds about two.
ENCODE_CHUNK_BYTES = 1 << 20
ENCODE_BYTES = 2 * ENCODE_CHUNK_BYTES


# Resident size of an idle ``convewma serve`` with the shipped model (torch, uvicorn, the
# warm model), measured on the CPU image at about 0.26 GB; rounded up.
IDLE_PROCESS_BYTES = 320 * 1024 * 1024


def batch_bytes(max_batch_values: int, channels: int, itemsize: int = FLOAT32) -> int:
    """One forward's own arrays, outside the budget: the padded input and its rows, the
    ``(N, C, T)`` output and the per-request copies cut from it (float64: ``itemsize`` 8)."""
    return max_batch_values * itemsize * (2 + 2 * channels)


# What a forward holds beyond its input and output: the FIR's copies and scratch, and the
# gap-aware paths' arrays, which run a slice of at most filters.GAP_WORKSPACE_VALUES rows'
# values at a time. Measured at up to 45 MB (a 4M-value float64 batch with gaps, C = 4).
FORWARD_WORKSPACE_BYTES = 48 * 1024 * 1024


def peak_bytes(max_inflight_bytes: int, max_batch_values: int, channels: int) -> int:
    """The most a server process can hold: the sizing rule for a memory limit."""
    # A float64 batch: the largest one (a request may ask for float64).
    batch = batch_bytes(max_batch_values, channels, FLOAT64) + FORWARD_WORKSPACE_BYTES
    return IDLE_PROCESS_BYTES + batch + max_inflight_bytes


def parse_bytes(body_bytes: int, values_bound: int, channels: int) -> int:
    """Step 2: a read body about to be parsed (``values_bound`` from its separators)."""
    # The most a choice of channels can cost: all but one (a copy of C - 1 beside the C).
    worst_result = result_bytes_per_value(channels, max(channels - 1, 1))
    per_value = max(PARSE_BYTES_PER_VALUE, worst_result)
    return body_bytes + values_bound * per_value + ENCODE_BYTES


def result_bytes_per_value(
    model_channels: int, chosen_channels: int, itemsize: int = FLOAT32, inputs: int = 1
) -> int:
    """Input values (``inputs`` copies: 2 with a history, the series again after it), the
    batch's outputs for every channel, and the chosen channels' copy (none when
    ``chosen_channels`` is all of them)."""
    selection = chosen_channels if chosen_channels != model_channels else 0
    return itemsize * (inputs + model_channels + selection)


def result_bytes(
    values: int, model_channels: int, chosen_channels: int, itemsize: int = FLOAT32, inputs: int = 1
) -> int:
    """Step 3: a parsed request until its response is sent (``values``: series and history)."""
    per_value = result_bytes_per_value(model_channels, chosen_channels, itemsize, inputs)
    return values * per_value + ENCODE_BYTES


class MemoryBudget:
    """Bytes reserved by requests in flight. Used from the event loop only, so no lock."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self.used = 0

    def try_take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        return True

    def give_back(self, amount: int) -> None:
        self.used -= amount
        assert self.used >= 0, f"budget released more than it lent ({self.used})"


@dataclass(eq=False)
class Reservation:
    """One request's share of a :class:`MemoryBudget`; ``close`` returns all of it."""

    budget: MemoryBudget
    held: int = 0

    def fits_alone(self, amount: int) -> bool:
        return amount <= self.budget.capacity

    def resize(self, amount: int) -> bool:
        """Hold exactly ``amount`` bytes; False (holding what it held) if that does not fit."""
        if amount <= self.held:
            self.budget.give_back(self.held - amount)
        elif not self.budget.try_take(amount - self.held):
            return False
        self.held = amount
        return True

    def close(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0
