"""Checkpointing, shaped like torchtitan's `components/checkpointer/`: one policy, one module per format.

Serves the contract that a killed run resumes where it stopped (DESIGN.md, "Outputs are written
atomically"): `policy` decides when a run saves, in which format, and what it resumes from;
`state` builds what a checkpoint holds besides the weights (fingerprint, generators, loader);
`torch_format` is the reference format (`checkpoint.pt`, torch.save + sha256) and `rust_format`
the fast one (`checkpoint.safetensors`, written on a Rust thread), which imports the reference for
its format number and error, never the reverse.
"""
