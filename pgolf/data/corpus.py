"""The embedded default corpus: English text and Python source that every CPython ships.

No download: :func:`iter_documents` yields, in a fixed order,

1. every entry of ``pydoc_data.topics.topics`` (the ``help()`` topics: the language
   reference in prose), sorted by topic name, one document each;
2. for each module of :data:`MODULES` (a fixed, sorted list of pure-Python standard-library
   modules), every module, class and function docstring of its source file, one document
   each, skipping those shorter than :data:`MIN_DOC_CHARS` and exact repeats;
3. for each module of :data:`MODULES`, its source file as one document (the docstrings alone
   are under 2 MB; the sources bring the corpus to about 6 MB).

Sources are read from the stdlib directory and parsed with ``ast``, never imported: live
objects would make the text depend on what else the process did (pytest replaces
``sys.unraisablehook``, torch patches ``inspect``). A module missing from this build is
skipped. The text depends only on the CPython version, never on the install path, so the
same version gives the same documents in the same order; :func:`corpus_sha256` fingerprints
them.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

MIN_DOC_CHARS = 40

# Sorted, pure Python. No antigravity, this, idlelib, tkinter or turtle.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.futures",
    "asyncio.locks", "asyncio.queues", "asyncio.streams", "asyncio.tasks", "base64", "bdb",
    "bisect", "bz2", "calendar", "cmd", "code", "codecs", "collections", "colorsys",
    "concurrent.futures._base", "configparser", "contextlib", "contextvars", "copy", "copyreg",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email.charset",
    "email.feedparser", "email.generator", "email.header", "email.message", "email.parser",
    "email.policy", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "json", "json.decoder", "json.encoder", "keyword", "linecache",
    "locale", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "multiprocessing.connection", "multiprocessing.pool", "multiprocessing.process", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "queue", "quopri",
    "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string",
    "struct", "subprocess", "symtable", "tabnanny", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing", "unittest.case",
    "unittest.loader", "unittest.mock", "unittest.result", "unittest.runner", "unittest.suite",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax.handler", "xml.sax.saxutils", "zipfile", "zipimport",
    "zoneinfo",
)


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _source(name: str) -> str | None:
    """The source of a standard-library module, read from the stdlib directory (not imported)."""
    base = Path(sysconfig.get_paths()["stdlib"]).joinpath(*name.split("."))
    for path in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
    return None


def _docstrings(source: str) -> list[str | None]:
    """Docstrings of the module, its classes and functions (breadth-first ``ast`` order)."""
    return [ast.get_docstring(node, clean=False) for node in ast.walk(ast.parse(source))
            if isinstance(node, _DOC_NODES)]


def iter_documents() -> Iterator[str]:
    """Yield the embedded corpus, one document per item, in a fixed order (see module doc).

    The documents are gathered once per process (parsing the sources takes seconds)."""
    return iter(_documents())


@functools.lru_cache(maxsize=1)
def _documents() -> tuple[str, ...]:
    return tuple(_generate())


def _generate() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
    sources = [src for src in map(_source, MODULES) if src]
    seen: set[str] = set()
    for source in sources:
        for doc in _docstrings(source):
            if doc and len(doc.strip()) >= MIN_DOC_CHARS and doc not in seen:
                seen.add(doc)
                yield inspect.cleandoc(doc)
    yield from sources


def corpus_sha256(documents: Iterable[str]) -> str:
    """SHA-256 of the documents, each UTF-8 encoded and prefixed by its byte length (8 bytes LE)."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
