"""Session setup shared by the tests.

Without CUDA, Triton kernels can only run in Triton's interpreter, and the switch must be set before
anything imports triton (tests/test_kernels.py; nanigpt/kernels/__init__.py does the same).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
