"""Input and output: routing traces and expert loads in (`moefast.io.readers`, streamed by
`moefast.io.streaming`), engine placement files out and in (`moefast.io.engines`), model
layer layouts (`moefast.io.layouts`), traces recorded from models or made up."""

from moefast.io.engines import PLACEMENT_FORMATS, load_placement, save_placement
from moefast.io.provenance import load_trace
from moefast.io.readers import load_expert_load
from moefast.io.streaming import SubsetTableBuilder, convert, iter_trace

__all__ = [
    "PLACEMENT_FORMATS",
    "SubsetTableBuilder",
    "convert",
    "iter_trace",
    "load_expert_load",
    "load_placement",
    "load_trace",
    "save_placement",
]
