"""PackedMap: a dict's answers, its entries held in two buffers, not in objects of their
own (issue 55: thousands of suspended tasks' records, decision 951)."""

from __future__ import annotations

import random
import sys

import pytest

from corral.supervisor.tasks.packed import PackedInts, PackedMap


def test_a_packed_map_answers_as_a_dict_through_sets_removals_and_regrowth() -> None:
    rnd = random.Random(55)
    keys = [f"01a2184c-{i:04x}-" + "é" * rnd.randint(0, 9) for i in range(700)]
    packed, plain = PackedMap(), {}
    for _ in range(40_000):
        key, roll = rnd.choice(keys), rnd.random()
        if roll < 0.5:
            value = rnd.randbytes(rnd.randint(0, 40))
            packed[key] = plain[key] = value
        elif roll < 0.8:
            assert packed.pop(key, None) == plain.pop(key, None)
        else:
            assert packed.get(key) == plain.get(key)
            assert (key in packed) == (key in plain)
        assert len(packed) == len(plain)
    assert sorted(packed.items()) == sorted(plain.items())
    assert sorted(packed) == sorted(plain)
    with pytest.raises(KeyError):
        del packed["absent"]
    assert 3 not in packed
    packed.clear()
    assert (len(packed), packed.get(keys[0]), packed.keys()) == (0, None, [])


def test_entries_iterate_in_the_order_set_a_value_set_again_last() -> None:
    packed = PackedMap()
    for key in ("c", "a", "b"):
        packed[key] = key.encode()
    packed["c"] = b"again"
    del packed["a"]
    assert packed.items() == [("b", b"b"), ("c", b"again")]


def test_packed_ints_hold_64_bit_numbers() -> None:
    seqs = PackedInts()
    seqs["t1"], seqs["t2"] = 2**62, -5
    assert (seqs["t1"], seqs.get("t2"), seqs.get("t3")) == (2**62, -5, None)
    with pytest.raises(KeyError):
        seqs["t3"]


def test_entries_are_no_objects_of_their_own() -> None:
    """A dict of 5,000 entries keeps 10,000 objects (a key and a value each, made by the
    caller and let go); a PackedMap keeps its two buffers."""
    packed = PackedInts()
    before = sys.getallocatedblocks()
    for i in range(5_000):
        packed[f"01a2184c-b63b-76c3-9569-{i:012x}"] = 1_000_000 + i
    assert sys.getallocatedblocks() - before < 100
    assert packed["01a2184c-b63b-76c3-9569-000000000fff"] == 1_000_000 + 0xfff
