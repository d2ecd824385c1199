"""Builds the pgolf C++ extension (``pgolf._codec``): bit packing, the rANS coder and the
context-modelled matrix coder.

Metadata lives in pyproject.toml. The extension needs only pybind11 and a C++17 compiler
(no libtorch). Set ``PGOLF_SANITIZE=1`` to build with AddressSanitizer + UBSan.
"""
import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

extra_compile_args = ["-O3"]
extra_link_args = []
if os.environ.get("PGOLF_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_compile_args = ["-O1", "-g", *sanitize]
    extra_link_args = sanitize

ext_modules = [
    Pybind11Extension(
        "pgolf._codec",
        sorted(glob("csrc/*.cpp")),
        depends=sorted(glob("csrc/*.h")),  # a header change rebuilds the extension
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
