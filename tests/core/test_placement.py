import moefast as mf
import numpy as np
import pytest


def test_matrix_and_lists_agree():
    replicas = np.array([[True, False, True], [False, True, False]])
    p = mf.Placement(replicas)
    assert p.num_experts == 2 and p.num_gpus == 3
    assert p.to_lists() == [[0, 2], [1]]
    assert p.slots_used.tolist() == [1, 1, 1]
    q = mf.Placement.from_lists([[2, 0], [1]], num_gpus=3)
    assert q == p
    assert np.array_equal(q.replicas, replicas)


def test_many_gpus():
    lists = [[e % 1024, (e * 7) % 1024] for e in range(300)]
    p = mf.Placement.from_lists(lists, num_gpus=1024)
    assert p.replicas.shape == (300, 1024)
    assert p.slots_used.sum() == sum(len(set(gpus)) for gpus in lists)


def test_bad_placements():
    with pytest.raises(ValueError, match="expert 1 has no replica"):
        mf.Placement(np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="expert 0 is placed on GPU 5"):
        mf.Placement.from_lists([[5]], num_gpus=2)
    with pytest.raises(ValueError, match="expert 0 is placed on GPU -1"):
        mf.Placement.from_lists([[-1]], num_gpus=2)
    with pytest.raises(ValueError, match="num_gpus must be in"):
        mf.Placement.from_lists([[0]], num_gpus=2000)
    with pytest.raises(ValueError, match="2-dimensional"):
        mf.Placement(np.array([True, False]))
    with pytest.raises(TypeError, match="bool"):
        mf.Placement(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="0 GPU columns"):
        mf.Placement(np.zeros((3, 0), dtype=bool))


def test_gpu_ids_and_counts_out_of_int_range():
    # pyo3 raised OverflowError for these, and read True as GPU 1.
    with pytest.raises(ValueError, match="num_gpus must be at least 1, got -2"):
        mf.Placement.from_lists([[0], [1]], num_gpus=-2)
    with pytest.raises(ValueError, match="num_gpus = 18446744073709551616 is out of range"):
        mf.Placement.from_lists([[0], [1]], num_gpus=2**64)
    with pytest.raises(
        ValueError, match="GPU id of expert 0 = 9223372036854775808 is out of range"
    ):
        mf.Placement.from_lists([[2**63], [1]], num_gpus=2)
    with pytest.raises(TypeError, match="GPU id of expert 0 must be an int, got bool"):
        mf.Placement.from_lists([[True], [False]], num_gpus=2)
    assert mf.Placement.from_lists([[np.int64(1)], [0]], num_gpus=np.int32(2)).to_lists() == [
        [1],
        [0],
    ]
    table = mf.SubsetTable.from_topk(np.array([[0, 1]]), num_experts=2)
    with pytest.raises(ValueError, match="num_gpus = 18446744073709551616 is out of range"):
        mf.lower_bound(table, 2**64)
