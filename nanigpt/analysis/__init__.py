"""Analysis after a run: what do the trained runs' outputs say? (project questions 1 and 3)

Each module is a CLI that reads a finished run's files (or the machine's) and writes a result the
figures draw: `ceilings` measures this device's matmul FLOP/s and copy bandwidth (the roofline's
and MFU's denominators), `trace_analysis` sorts a profiler trace's kernel time into categories,
`memory` predicts a run's footprint beside its measured peak, `report` joins these into one run's
profile, and `specialization` scores a trained MoE's routing against the sources of the data.
The instruments a run carries while it trains are in `nanigpt.measure`.
"""
