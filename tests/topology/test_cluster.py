"""`Cluster`: the GPUs, slots and topology of `optimize` and `plan`, checked when made."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.moves import ROUND_US
from moefast.topology.cluster import as_cluster
from moefast.topology.times import Topology


def test_fields_are_checked_and_named():
    topo = Topology.preset(gpus_per_node=4)
    c = mf.Cluster(np.int64(8), 5, topology=topo, num_groups=4, round_us=30)
    assert (c.num_gpus, c.slots_per_gpu, c.num_groups, c.round_us) == (8, 5, 4, 30.0)
    assert type(c.num_gpus) is int
    assert mf.Cluster(8, 5).round_us == ROUND_US
    with pytest.raises(ValueError, match="num_gpus must be at least 1, got 0"):
        mf.Cluster(0, 5)
    with pytest.raises(TypeError, match="slots_per_gpu must be an int, got float"):
        mf.Cluster(8, 5.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"topology must be a moefast\.topology\.times\.Topology"):
        mf.Cluster(8, 5, topology="h800_normal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_groups needs topology="):
        mf.Cluster(8, 5, num_groups=4)
    with pytest.raises(ValueError, match="num_groups must be at least 1"):
        mf.Cluster(8, 5, topology=topo, num_groups=0)
    with pytest.raises(ValueError, match="round_us must be finite and non-negative"):
        mf.Cluster(8, 5, round_us=-1.0)
    with pytest.raises(AttributeError):
        c.num_gpus = 4  # type: ignore[misc]  # frozen


def test_shorthand_and_compute_only():
    topo = Topology.preset(gpus_per_node=4)
    assert as_cluster(8, 5) == mf.Cluster(8, 5)
    c = mf.Cluster(8, 5, topology=topo)
    assert as_cluster(c, None) is c
    assert c.compute_only == mf.Cluster(8, 5)
    with pytest.raises(TypeError, match="slots_per_gpu is given twice"):
        as_cluster(c, 5)
    with pytest.raises(TypeError, match="slots_per_gpu is missing"):
        as_cluster(8, None)
