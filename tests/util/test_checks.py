"""moefast._util.checks: exact ints, counts, seeds, int lists, layer ids and real numbers."""

import math

import numpy as np
import pytest
from moefast._util.checks import (
    INT64_MAX,
    check_count,
    check_int,
    check_ints,
    check_layer_ids,
    check_non_negative,
    check_number,
    check_positive,
    check_seed,
)


@pytest.mark.parametrize("value", [3, np.int8(3), np.uint64(3), np.int64(3)])
def test_check_int_takes_python_and_numpy_ints(value):
    out = check_int("n", value, 0, 5)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize(
    "value, name",
    [
        (True, "bool"),
        (np.bool_(True), "bool"),
        (2.0, "float"),
        (np.float32(2), "float32"),
        ("2", "str"),
    ],
)
def test_check_int_refuses_bools_floats_and_strings(value, name):
    with pytest.raises(TypeError, match=f"slots must be an int, got {name}"):
        check_int("slots", value)


def test_check_int_bounds_name_the_argument_and_value():
    with pytest.raises(ValueError, match="num_gpus must be at least 1, got 0"):
        check_int("num_gpus", 0, 1, 8)
    with pytest.raises(ValueError, match="num_gpus must be at most 8, got 9"):
        check_int("num_gpus", 9, 1, 8)
    assert check_int("x", -(2**80)) == -(2**80)  # no bounds: any int


def test_counts_and_seeds_fit_the_cores_int64():
    assert check_count("steps", INT64_MAX) == INT64_MAX
    with pytest.raises(ValueError, match="steps must be at most 9223372036854775807"):
        check_count("steps", 2**63)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        check_count("steps", 0)
    assert check_count("max_evaluations", 0, low=0) == 0
    assert check_seed("seed", 0) == 0
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        check_seed("seed", -1)


def test_check_ints_takes_one_int_or_a_sequence():
    assert check_ints("sizes", 4) == [4]
    assert check_ints("sizes", np.int32(4)) == [4]
    assert check_ints("sizes", [1, np.int64(2)]) == [1, 2]
    assert check_ints("sizes", np.array([[1, 2], [3, 4]])) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="sizes is empty"):
        check_ints("sizes", [])
    with pytest.raises(TypeError, match=r"sizes must hold ints, got 1\.5"):
        check_ints("sizes", [1, 1.5])
    with pytest.raises(TypeError, match="sizes must hold ints"):
        check_ints("sizes", [True])
    with pytest.raises(ValueError, match="sizes = 1180591620717411303424 is out of range"):
        check_ints("sizes", [2**70])
    with pytest.raises(ValueError, match="sizes must be at least 1, got 0"):
        check_ints("sizes", [3, 0], low=1)


def test_check_layer_ids():
    assert check_layer_ids(np.arange(3) + 3) == [3, 4, 5]
    assert check_layer_ids([]) == []
    with pytest.raises(TypeError, match=r"layer_ids must hold ints, got 2\.7"):
        check_layer_ids([1, 2.7])
    with pytest.raises(TypeError, match="ids must hold ints, got 'a'"):
        check_layer_ids(["a"], name="ids")


def test_numbers():
    assert check_number("p", np.float32(1.5)) == 1.5
    assert math.isinf(check_number("p", math.inf))
    assert type(check_number("p", 2)) is float
    with pytest.raises(TypeError, match="p must be a real number, got bool"):
        check_number("p", True)
    with pytest.raises(TypeError, match="p must be a real number, got complex"):
        check_number("p", 1j)
    with pytest.raises(ValueError, match=r"p = 1000\d* is out of range"):
        check_number("p", 10**1000)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_non_negative_and_positive_refuse_what_they_say(bad):
    with pytest.raises(ValueError, match="alpha must be finite and non-negative"):
        check_non_negative("alpha", bad)
    with pytest.raises(ValueError, match="limit must be positive and finite"):
        check_positive("limit", bad)


def test_zero_is_non_negative_but_not_positive():
    assert check_non_negative("alpha", 0) == 0.0
    with pytest.raises(ValueError, match="limit must be positive and finite, got 0"):
        check_positive("limit", 0)
