"""Drop-in accelerated ops for Parameter Golf training and evaluation.

Each op family lives in one module with four layers: the Triton kernel(s), a typed launcher,
an autograd Function, and a keyword-only public function with a pure-torch reference beside it.
Dispatch is explicit: every public op takes ``impl="auto" | "triton" | "torch"``.

This package imports only torch (and triton lazily, when a Triton path runs); it never imports
pgolf and never initialises CUDA at import time.
"""
