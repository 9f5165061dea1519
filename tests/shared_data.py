"""Where the real routing data of ../shared/data lies (beside the checkout, as in CI)."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEEPSEEK_DECODE_LOAD = (
    SHARED_DATA / "deepseek_v3_sglang_expert_distribution" / "decode_in1000out1000.json"
)
