"""Parallelism applied to a built model from outside, each strategy with a ledger of its collectives.

Serves core question 2 (which collectives fire, when, with how many bytes, at what cost, and how
strategies compose). Entry points: `apply.parallelize` (what the trainer calls),
`apply.validate_parallelism` (refuses a bad setting before any process starts), `launch.command`
(the validated torchrun line, built by `nanigpt.launch`), `bench` (the strategy benchmark CLI).
"""
