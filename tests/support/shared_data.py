"""Where the tests' data lies: small fixtures in tests/fixtures (shipped, permissive
licences), and real data without a licence in ../shared/data beside the checkout, which
cannot ship: the tests that read it skip, with that reason, when it is absent."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: OLMoE-1B-7B expert counts of layers 0, 7, 15 (Apache-2.0; see fixtures/README.md).
OLMOE_C4_LOAD = FIXTURES / "olmoe_c4_logical_count.json"

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEEPSEEK_DECODE_LOAD = (
    SHARED_DATA / "deepseek_v3_sglang_expert_distribution" / "decode_in1000out1000.json"
)
#: Marks a test of the DeepSeek-V3 SGLang statistics, which have no licence.
needs_deepseek_statistics = pytest.mark.skipif(
    not DEEPSEEK_DECODE_LOAD.exists(),
    reason="the DeepSeek-V3 SGLang statistics have no licence, so they cannot ship with the"
    " tests: they are read from ../shared/data, which is absent",
)
