"""The embedded default corpus: English text and Python source that every CPython ships.

No download: :func:`iter_documents` yields, in a fixed order,

1. every entry of ``pydoc_data.topics.topics`` (the ``help()`` topics: the language
   reference in prose), sorted by topic name, one document each;
2. for each module of :data:`MODULES` (a fixed, sorted list of standard-library modules that
   import without side effects), the module docstring and the docstrings of its public
   classes, functions and methods defined in that module, one document each, skipping
   docstrings shorter than :data:`MIN_DOC_CHARS` and exact repeats;
3. for each module of :data:`MODULES` implemented in Python, its source file as one document
   (the docstrings alone are about 1.3 MB; the sources bring the corpus to a few MB).

A module that fails to import, or whose source is not installed, is skipped. The text
depends only on the CPython version (never on the install path), so the same version gives
the same documents in the same order; :func:`corpus_sha256` fingerprints them.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterable, Iterator

MIN_DOC_CHARS = 40

# Sorted; none of these runs code with visible effects on import (no antigravity, this,
# idlelib, tkinter, turtle).
MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures",
    "asyncio.locks", "asyncio.queues", "asyncio.streams", "asyncio.tasks", "base64", "bdb",
    "binascii", "bisect", "builtins", "bz2", "calendar", "cmath", "cmd", "code", "codecs",
    "collections", "colorsys", "concurrent.futures._base", "configparser", "contextlib",
    "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email.charset", "email.feedparser", "email.generator", "email.header",
    "email.message", "email.parser", "email.policy", "email.utils", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "gettext", "glob",
    "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client",
    "http.cookiejar", "http.cookies", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "json.decoder", "json.encoder", "keyword", "linecache", "locale",
    "logging", "logging.handlers", "lzma", "mailbox", "marshal", "math", "mimetypes",
    "multiprocessing.connection", "multiprocessing.pool", "multiprocessing.process", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats",
    "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat",
    "statistics", "string", "struct", "subprocess", "symtable", "sys", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "trace", "traceback",
    "tracemalloc", "types", "typing", "unicodedata", "unittest.case", "unittest.loader",
    "unittest.mock", "unittest.result", "unittest.runner", "unittest.suite", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax.handler", "xml.sax.saxutils", "zipfile", "zipimport",
    "zlib", "zoneinfo",
)


def _import(name: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module missing from this build is simply skipped
        return None


def _docstrings(module: ModuleType) -> list[str | None]:
    """The module docstring, then public members defined in the module, in name order."""
    docs = [module.__doc__]
    with warnings.catch_warnings():  # touching deprecated aliases (typing.io) warns
        warnings.simplefilter("ignore")
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            docs.append(getattr(obj, "__doc__", None))
            if inspect.isclass(obj):
                docs.extend(getattr(member, "__doc__", None) for attr, member in sorted(vars(obj).items())
                            if not attr.startswith("_") and (callable(member) or isinstance(
                                member, (property, classmethod, staticmethod))))
    return docs


def _source(module: ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def iter_documents() -> Iterator[str]:
    """Yield the embedded corpus, one document per item, in a fixed order (see module doc)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
    modules = [m for m in map(_import, MODULES) if m is not None]
    seen: set[str] = set()
    for module in modules:
        for doc in _docstrings(module):
            if isinstance(doc, str) and len(doc.strip()) >= MIN_DOC_CHARS and doc not in seen:
                seen.add(doc)
                yield inspect.cleandoc(doc)
    for module in modules:
        source = _source(module)
        if source:
            yield source


def corpus_sha256(documents: Iterable[str]) -> str:
    """SHA-256 of the documents, each UTF-8 encoded and prefixed by its byte length (8 bytes LE)."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
