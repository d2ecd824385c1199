"""pgolf: a kernel-centric engine for the OpenAI Parameter Golf challenge.

Importing this package has no side effects: it does not initialise CUDA, read the
environment, or import the C++ extension (see :mod:`pgolf.codec` for that).
"""
__version__ = "0.1.0"
