"""Building pgolf's C++ codec (``pgolf._codec``) at run time from the source a submission carries.

A bundled ``train_gpt.py`` whose configuration writes ``quant.codec='rans'`` artifacts holds
``csrc/`` as text (its ``NATIVE``, counted in its code bytes): the challenge's environment has no
pgolf extension, but it has a C compiler wherever Triton runs, and torch ships pybind11's headers
(``torch/include``). Before training, :func:`build_codec` compiles those sources with the C++
compiler named by ``CXX``, else the one the interpreter was built with, else ``c++``, ``g++`` or
``clang++`` on the PATH (one process per ``.cpp``, then one link), and registers the module as
``pgolf._codec``, the name :mod:`pgolf.codec` imports. The build lands in
``<folder>/<key>/`` (``key`` hashes the sources, the compiler, its flags and the interpreter), so
a rerun or another rank reuses it; a file lock lets one process build while the others wait.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Mapping

MODULE = "pgolf._codec"
FLAGS = ("-O3", "-DNDEBUG", "-std=c++17", "-fPIC", "-fvisibility=hidden")  # as setup.py builds it
LINK_FLAGS = ("-shared", *(("-undefined", "dynamic_lookup") if sys.platform == "darwin" else ()))


class NativeBuildError(RuntimeError):
    """The embedded C++ codec cannot be built here; the message says what is missing or what failed."""


def compiler(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The C++ compiler's command line: ``CXX``, the interpreter's own ``CXX``, or the first of
    ``c++``, ``g++``, ``clang++`` on the PATH; :class:`NativeBuildError` when there is none."""
    for candidate in (environ.get("CXX"), sysconfig.get_config_var("CXX"), "c++", "g++", "clang++"):
        argv = shlex.split(candidate or "")
        if argv and shutil.which(argv[0]):
            return argv
    raise NativeBuildError("this submission writes rANS artifacts (quant.codec='rans') and builds pgolf's C++ codec "
                           "from the source it carries, but no C++ compiler was found (tried $CXX, the interpreter's "
                           "CXX, c++, g++, clang++): install one or set CXX, or train with --set quant.codec=zlib")


def include_dirs() -> list[str]:
    """The interpreter's headers and pybind11's (the copy under ``torch/include``), each checked."""
    import torch

    python = sysconfig.get_paths()["include"]
    pybind = str(Path(torch.__file__).parent / "include")
    for folder, header, what in ((python, "Python.h", "the interpreter's development headers (e.g. python3-dev)"),
                                 (pybind, "pybind11/pybind11.h", "pybind11's headers (torch ships them)")):
        if not (Path(folder) / header).is_file():
            raise NativeBuildError(f"building pgolf's C++ codec needs {header} in {folder}: install {what}, "
                                   "or train with --set quant.codec=zlib")
    return [python, pybind]


def _run(argv: list[str], what: str) -> tuple[subprocess.Popen, str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), what


def _wait(jobs: list[tuple[subprocess.Popen, str]]) -> None:
    """Wait for every job; :class:`NativeBuildError` with the first failure's command and output."""
    failed = []
    for proc, what in jobs:
        output, _ = proc.communicate()
        if proc.returncode:
            failed.append(f"{what} failed (exit {proc.returncode}): {shlex.join(proc.args)}\n{output[-3000:]}")
    if failed:
        raise NativeBuildError("building pgolf's C++ codec from the embedded source: " + failed[0])


def _compile(sources: dict[str, str], cxx: list[str], includes: list[str], target: Path) -> None:
    """Compile ``sources`` (``{file name: text}``) into the extension module file ``target``."""
    work = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent.parent))
    try:
        for name, text in sources.items():
            (work / name).write_text(text, encoding="utf-8")
        include = [f"-I{d}" for d in (work, *includes)]
        units = sorted(name for name in sources if name.endswith(".cpp"))
        _wait([_run([*cxx, *FLAGS, *include, "-c", str(work / u), "-o", str(work / f"{u}.o")], f"compiling {u}")
               for u in units])
        linked = work / target.name
        _wait([_run([*cxx, *LINK_FLAGS, *(str(work / f"{u}.o") for u in units), "-o", str(linked)], "linking")])
        target.parent.mkdir(exist_ok=True)
        os.replace(linked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE] = module
    package, _, name = MODULE.rpartition(".")
    if package in sys.modules:  # as an import would: pgolf._codec is an attribute of pgolf
        setattr(sys.modules[package], name, module)
    return module


def build_codec(sources: dict[str, str], folder: str | os.PathLike) -> float:
    """Build (or reuse) ``pgolf._codec`` from ``sources`` under ``folder`` and register it (see the
    module docstring); returns the seconds spent compiling (0.0 when a previous build was reused).
    Raises :class:`NativeBuildError` naming what is missing or the failing command and its output."""
    cxx, includes = compiler(), include_dirs()
    key = hashlib.sha256(json.dumps([sorted(sources.items()), cxx, FLAGS, LINK_FLAGS, sys.version,
                                     includes]).encode()).hexdigest()[:16]
    folder = Path(folder)
    target = folder / key / f"_codec{sysconfig.get_config_var('EXT_SUFFIX')}"
    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            t0 = time.perf_counter()
            _compile(sources, cxx, includes, target)
            seconds = time.perf_counter() - t0
    _load(target)
    return seconds
