"""Measurement built into every run: where does time go in a training step? (project question 1)

`timers` times the phases of a step (data, forward, backward, optimizer), `trace` records a
torch.profiler window of a few steps, `hardware` holds the datasheet peaks that turn counted FLOPs
into MFU, and `provenance` stamps every output with the config hash, code version, packages and
device so that numbers from different machines and commits can be told apart. What is computed
from a run's outputs afterwards is in `nanigpt.analysis`.
"""
