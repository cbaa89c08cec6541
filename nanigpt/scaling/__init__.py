"""Scaling-law fits: what do scaling laws feel like in practice, and how do dense and MoE scale?

`aggregate` gathers every run's `summary.json` into `results/scaling/runs.parquet`; `fit` fits
Chinchilla's parametric law L(N, D) = E + A/N^alpha + B/D^beta per architecture (approach 3 of
Hoffmann et al. 2022, with the Huber/log-sum-exp details of Besiroglu et al. 2024) and derives the
compute-optimal frontier written to `results/scaling/fits.json`; `crossover` pairs MoE runs with
their dense partners and fits both for the MoE-dense crossover figure; `seeds` summarises a paired
difference over seeds; `predict` forecasts held-out runs from the fit before they train and
checks the forecast after; `advise` turns a fit and the runs' measured throughput into the
FLOP-optimal and wall-clock-optimal model size for a compute budget. Most submodules are CLIs, so this package imports none of them
(`python -m nanigpt.scaling.fit` would otherwise import itself twice).
"""
