"""Helpers of the tests and benches: plain references, workloads, engine transcriptions."""
