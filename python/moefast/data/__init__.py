"""Data shipped with moefast (see README.md here for origin and licence)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent
#: Real gpt-oss-20b decode routing: 645 tokens x 24 layers x top-4 of 32 experts.
GPTOSS20B_DECODE = DATA_DIR / "gptoss20b_decode.npz"
