"""The trainer's parts, each deciding its own "when" inside `nanigpt.train.train`'s loop.

Serves project questions 1 and 2 (where a step's time goes; how much of it is communication):
`step` (one optimizer step and the validation forward, shared with `nanigpt.parallel.bench`),
`metrics` (the per-step rows, the summary, comm.json), `checkpointing` (resume, periodic saves, WSD
branch points), `profiling` (the profiler window), `data` (a run's shards and floor), `processes`
(process start-up under torchrun) and `ranks` (reductions and gathers over the ranks).
"""
