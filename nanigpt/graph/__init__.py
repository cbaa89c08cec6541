"""The graph layer: what the Snakefile imports to plan, without torch.

Serves the contract "a run is named by its parameters" and keeps planning fast on any machine:
`config` loads, validates and expands the config into runs; `jobs` plans the jobs that train
several runs in one process (WSD and grouped); `paths` names every file of the graph; `commands`
writes the command lines shared with `scripts/gpu_session.py`; `plancache` keeps an unchanged
plan from being recomputed; `snakelock` clears the locks of a killed Snakemake; `runtable` lists
the declared runs with their results and state. Nothing here imports torch
(tests/test_layout.py plans every shipped config with torch hidden), and the run layer
(`nanigpt.train`, `nanigpt.training`) never imports this package.
"""
