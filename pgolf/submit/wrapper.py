"""The compressed-wrapper convention for counting code bytes (the frontier records' rule).

The script is minified with python-minifier (docstrings and other literal statements removed;
globals, annotations and asserts kept; no literal hoisting), compressed with LZMA (the standard
library, so the challenge's environment can decompress it) and base85-encoded into a two-line
self-extracting wrapper::

    import lzma,base64
    exec(lzma.decompress(base64.b85decode("...")))

The counted code bytes are the wrapper's exact length. A bundle's module sources are minified
one by one before they are embedded (the minifier leaves string literals alone), then the whole
script once more.
"""
from __future__ import annotations

import base64
import lzma


def minify(source: str) -> str:
    """``source`` through python-minifier with the settings of the module docstring."""
    try:
        import python_minifier
    except ImportError:
        raise RuntimeError("the compressed wrapper needs python-minifier: pip install python-minifier") from None
    return python_minifier.minify(source, remove_literal_statements=True, remove_annotations=False,
                                  hoist_literals=False, rename_globals=False, remove_asserts=False)


def wrap(source: str) -> str:
    """The two-line wrapper that runs ``source`` (already minified or not)."""
    packed = base64.b85encode(lzma.compress(source.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    return f'import lzma,base64\nexec(lzma.decompress(base64.b85decode("{packed}")))\n'
