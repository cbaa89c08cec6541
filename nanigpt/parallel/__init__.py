"""Parallelism applied to a built model from outside, each strategy with a ledger of its collectives.

Serves core question 2 (which collectives fire, when, with how many bytes, at what cost, and how
strategies compose). Only strategies live here. Entry points: `setting` (the torch-free setting:
its dims, their order, the world size, and `validate_parallelism`, which refuses a bad setting
before any process starts), `apply.parallelize` (what the trainer calls), `mesh` (the device mesh
of a setting). The strategy benchmark is `nanigpt.bench.parallel`; processes are started by
`nanigpt.launch`, which asks the setting for the world size.
"""
