"""Benchmarks: each module measures one fast path against its reference (results/rust, results/kernels)."""
