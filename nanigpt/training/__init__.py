"""The run layer: one training run, or one job of several runs, and the parts of its loop.

Serves project questions 1 and 2 (where a step's time goes; how much of it is communication) and
every run of the graph: `config` (the typed run config, torch-free, shared with the planner),
`schedule` (learning-rate schedules, WSD branch points), `step` (one optimizer step and the
validation forward, shared with `nanigpt.bench.parallel`), `metrics` (the per-step rows, the
summary, comm.json), `checkpoint/` (when to save and resume, and the two formats), `profiling`
(the profiler window), `data` (a run's shards and floor), `processes` (process start-up under
torchrun), `ranks` (reductions and gathers over the ranks) and `jobs` (the train/publish CLI of a
job of several runs). The loop itself is `nanigpt.train.train`, each part deciding its own "when"
inside it. Nothing here imports the graph layer (`nanigpt.graph`).
"""
