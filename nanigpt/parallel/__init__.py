"""Parallelism applied to a built model from outside, each strategy with a ledger of its collectives.

Serves core question 2 (which collectives fire, when, with how many bytes, at what cost, and how
strategies compose). Entry points: `apply.parallelize` (what the trainer calls),
`apply.validate_parallelism` (refuses a bad setting before any process starts), `bench` (the
strategy benchmark CLI). Processes are started by `nanigpt.launch` (which also holds the world-size
formula).
"""
