"""moefast's EPLB drop-in against the plain numpy transcription of DeepSeek's reference:

    pytest benches/bench_eplb.py -s

All 58 MoE layers of SGLang's published DeepSeek-V3 statistics (256 experts), 32 GPUs x 9
slots, hierarchical (8 groups, 4 nodes) and global policies. Each run also checks that both
give the same phy2log. The issue quotes about 1.2 s for the torch reference on this input.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from moefast.eplb import rebalance_experts
from support.eplb_reference import rebalance_experts as reference
from support.shared_data import DEEPSEEK_DECODE_LOAD


@pytest.mark.parametrize("groups, nodes", [(8, 4), (1, 3)], ids=["hierarchical", "global"])
def test_rebalance_58_layers(benchmark, groups, nodes):
    if not DEEPSEEK_DECODE_LOAD.exists():
        pytest.skip("needs ../shared/data")
    counts = np.array(json.loads(DEEPSEEK_DECODE_LOAD.read_text())["logical_count"])[3:]
    args = (counts, 288, groups, nodes, 32)
    phy2log = benchmark(rebalance_experts, *args)[0]
    start = time.perf_counter()
    expected = reference(*args)[0]
    reference_s = time.perf_counter() - start
    assert np.array_equal(phy2log, expected)
    median = benchmark.stats.stats.median
    print(
        f"\n{groups} groups / {nodes} nodes, 58 layers: moefast {median * 1e3:.2f} ms,"
        f" numpy reference {reference_s * 1e3:.0f} ms ({reference_s / median:.0f}x)"
    )
