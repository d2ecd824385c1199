"""Writing ``train_gpt.py``: the modules a run's configuration needs, and its configuration, in
one file that runs without pgolf.

Layout of the generated script: a docstring; the importer of :mod:`pgolf.submit.loader`, copied;
``CONFIG`` (the run's configuration, the defaults the official environment names override);
``SOURCES`` (``{module: (is_package, source)}``: the import closure of
:mod:`pgolf.submit.runtime`, minus what :func:`pgolf.submit.features.left_out` leaves out, each
module's text verbatim or minified); ``NATIVE`` (``{file name: text}``: pgolf's C++ codec
source, ``csrc/``, when the configuration's codec needs it, :func:`pgolf.submit.features.needs_native`;
else empty); and a main block that installs the importer and calls
:func:`pgolf.submit.runtime.main`. A left-out module that a bundled module imports at its top
level is replaced by a stub whose every attribute raises, naming the reason.
"""
from __future__ import annotations

import ast
import pprint
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.config import RunConfig
from pgolf.submit.features import left_out, needs_native, unsupported
from pgolf.submit.graph import closure, parents

ROOTS = ("pgolf", "triton_kernels")
ENTRY = "pgolf.submit.runtime"
SEARCH_ROOT = Path(__file__).resolve().parents[2]
NATIVE_DIR = "csrc"
NATIVE_SUFFIXES = (".cpp", ".h")

_MAIN = '''
if __name__ == "__main__":
    install(SOURCES, ROOTS, __file__)
    from pgolf.submit.runtime import main
    raise SystemExit(main(CONFIG, __file__, NATIVE))
'''

_STUB = '''"""Left out of this submission: {reason}."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def left_out(*args, **kwargs):
        raise RuntimeError(f"{module}.{{name}} is not part of this submission: {reason}")
    return left_out
'''


class BundleError(ValueError):
    """The run's configuration uses something the bundle cannot carry; the message says what."""


@dataclass(frozen=True)
class Bundle:
    """What goes into the script: ``sources`` (``{module: (is_package, source)}``, stubs included),
    ``left_out`` (``{module: reason}``, stubbed or not) and ``native`` (``{file name: C++ source}``)."""

    sources: dict[str, tuple[bool, str]]
    left_out: dict[str, str]
    native: dict[str, str]


def native_sources(search_root: Path = SEARCH_ROOT) -> dict[str, str]:
    """pgolf's C++ codec source (``csrc/*.cpp``, ``csrc/*.h``) as ``{file name: text}``; raises
    :class:`BundleError` when ``search_root`` has none (a pgolf install without its sources)."""
    folder = search_root / NATIVE_DIR
    files = sorted(p for p in folder.glob("*") if p.suffix in NATIVE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise BundleError(f"the run's codec needs pgolf's C++ codec, whose source {folder} is missing; submit from a "
                          "pgolf checkout, or train with --set quant.codec=zlib")
    return {p.name: p.read_text(encoding="utf-8") for p in files}


def plan_bundle(cfg: RunConfig, search_root: Path = SEARCH_ROOT) -> Bundle:
    """The modules ``cfg`` needs, read from ``search_root``; raises :class:`BundleError` listing every
    setting the bundle cannot carry."""
    reasons = unsupported(cfg)
    if reasons:
        raise BundleError("this run cannot become a submission: " + "; ".join(reasons))
    dropped = left_out(cfg, closure([ENTRY], search_root, ROOTS))
    kept = closure([ENTRY], search_root, ROOTS, skip=frozenset(dropped))
    sources = {name: (m.is_package, m.source) for name, m in kept.items()}
    for name, reason in dropped.items():
        if any(name in m.top_level_imports for m in kept.values()):
            missing = [p for p in parents(name) if p not in sources]
            if missing:
                raise BundleError(f"stub {name} needs packages {missing} that the bundle lacks")
            sources[name] = (False, _STUB.format(module=name, reason=reason))
    native = native_sources(search_root) if needs_native(cfg) else {}
    return Bundle(dict(sorted(sources.items())), dropped, native)


def _literal(text: str) -> str:
    """A Python literal of ``text``: a raw triple-quoted string when that reads back exactly, else repr."""
    raw = f"r'''{text}'''"
    if "'''" not in text and text.endswith("\n"):
        try:
            if ast.literal_eval(raw) == text:
                return raw
        except SyntaxError:
            pass
    return repr(text)


def _without_docstring(source: str) -> str:
    """``source`` minus its module docstring."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return "".join(source.splitlines(True)[body[0].end_lineno:]).lstrip("\n")
    return source


def render(bundle: Bundle, config: dict[str, Any], *, title: str) -> str:
    """The text of ``train_gpt.py`` for ``bundle`` with ``config`` baked in; ``title`` opens its docstring."""
    loader = _without_docstring((Path(__file__).parent / "loader.py").read_text(encoding="utf-8"))
    left = "".join(f"\n  {name}: {reason}" for name, reason in bundle.left_out.items())
    doc = (f"{title}\n\nGenerated by `pgolf submit` from pgolf's own modules (listed in SOURCES, each verbatim or "
           "minified);\nCONFIG is the run's configuration: the official environment names override it "
           "(SEED, ITERATIONS,\nDATA_PATH, TOKENIZER_PATH, ...). Run: python train_gpt.py, or "
           "torchrun --standalone --nproc_per_node=8 train_gpt.py."
           + (f"\nLeft out (the configuration does not use them):{left}" if left else "") + "\n")
    modules = "".join(f"    {name!r}: ({is_package}, {_literal(src)}),\n"
                      for name, (is_package, src) in bundle.sources.items())
    native = "".join(f"    {name!r}: {_literal(src)},\n" for name, src in bundle.native.items())
    return (f'"""{doc}"""\n{loader}\nROOTS = {ROOTS!r}\n'
            f"CONFIG = {pprint.pformat(config, width=110, sort_dicts=False)}\n"
            f"SOURCES = {{\n{modules}}}\nNATIVE = {{\n{native}}}\n{_MAIN}")
