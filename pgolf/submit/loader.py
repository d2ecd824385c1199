"""Importing modules from source texts held in memory: the first code a bundled submission runs.

This file is copied verbatim to the top of every generated ``train_gpt.py``, so it uses the
standard library only. :func:`install` puts a :class:`SourceImporter` first on ``sys.meta_path``;
it serves every module whose source it holds and refuses every other module under the same
top-level packages, so an installed copy of those packages is never picked up instead. Sources are
registered with ``linecache`` under their own file names, so tracebacks show their lines and
``inspect.getsource`` (which Triton's JIT reads) finds them.
"""
import importlib.abc
import importlib.util
import linecache
import sys


class SourceImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the modules of ``sources`` (``{name: (is_package, source)}``); any other
    module under ``roots`` is an ``ImportError`` that says it was left out of the bundle.
    ``origin`` (the script's path) prefixes the file names the modules report."""

    def __init__(self, sources, roots, origin):
        self.sources, self.roots, self.origin = sources, tuple(roots), origin

    def filename(self, name):
        """The file name module ``name`` reports (``<origin>/a/b.py``; it exists only in memory)."""
        is_package, _ = self.sources[name]
        return f"{self.origin}/{name.replace('.', '/')}{'/__init__' if is_package else ''}.py"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in self.roots:
            return None
        if name not in self.sources:
            raise ModuleNotFoundError(f"module {name} is not part of this submission (the bundler left it out: "
                                      "the run's configuration does not use it)", name=name)
        return importlib.util.spec_from_loader(name, self, origin=self.filename(name),
                                               is_package=self.sources[name][0])

    def create_module(self, spec):
        return None

    def get_source(self, name):
        return self.sources[name][1]

    def exec_module(self, module):
        name = module.__name__
        source, filename = self.sources[name][1], self.filename(name)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__file__ = filename
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)


def install(sources, roots, origin):
    """Serve ``sources`` (see :class:`SourceImporter`) ahead of every other importer."""
    sys.meta_path.insert(0, SourceImporter(sources, roots, origin))
