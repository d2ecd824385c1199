"""The compressed-wrapper convention for counting code bytes (the frontier records' rule).

The script is minified with python-minifier (docstrings and other literal statements removed;
globals, annotations and asserts kept; no literal hoisting; locals kept where Triton compiles), compressed with LZMA (the standard
library, so the challenge's environment can decompress it) and base85-encoded into a two-line
self-extracting wrapper::

    import lzma,base64
    exec(lzma.decompress(base64.b85decode("...")))

The counted code bytes are the wrapper's exact length. A bundle's module sources are minified
one by one before they are embedded (the minifier leaves string literals alone), then the whole
script once more. The C++ codec source a bundle carries loses its comments, indentation and blank
lines (:func:`minify_cpp`) before it is embedded.
"""
from __future__ import annotations

import ast
import base64
import lzma


def compiles_kernels(source: str) -> bool:
    """Whether ``source`` defines a function decorated by Triton (``@triton.jit``, ``@triton.autotune``...)."""
    return any(ast.unparse(d).startswith("triton.") for node in ast.walk(ast.parse(source))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for d in node.decorator_list)


def minify(source: str) -> str:
    """``source`` through python-minifier with the settings of the module docstring. Local names
    are shortened except in modules that define Triton kernels: Triton compiles a kernel from its
    source, and the minifier's renaming binds ``tl.constexpr`` arguments to plain locals, which
    the kernel then cannot use as compile-time constants."""
    try:
        import python_minifier
    except ImportError:
        raise RuntimeError("the compressed wrapper needs python-minifier: pip install python-minifier") from None
    return python_minifier.minify(source, remove_literal_statements=True, remove_annotations=False,
                                  hoist_literals=False, rename_globals=False, remove_asserts=False,
                                  rename_locals=not compiles_kernels(source))


def minify_cpp(source: str) -> str:
    """C++ ``source`` without comments, blank lines and the white space that starts or ends a line.
    Comments are found by pygments' C++ lexer, so ``//`` or ``/*`` inside a string or character
    literal stays; a line comment leaves its line end, a block comment a space; preprocessor lines
    stay whole. (C++ needs no indentation; the carried sources have no raw string literals.)"""
    try:
        from pygments.lexers import CppLexer
        from pygments.token import Comment
    except ImportError:
        raise RuntimeError("the compressed wrapper of a run with a C++ codec needs pygments: "
                           "pip install pygments") from None
    parts = []
    for kind, text in CppLexer(stripnl=False).get_tokens(source):
        if kind in Comment and kind not in Comment.Preproc and kind not in Comment.PreprocFile:
            parts.append("\n" if text.endswith("\n") else " ")
        else:
            parts.append(text)
    lines = (line.strip() for line in "".join(parts).splitlines())
    return "".join(line + "\n" for line in lines if line)


def wrap(source: str) -> str:
    """The two-line wrapper that runs ``source`` (already minified or not)."""
    packed = base64.b85encode(lzma.compress(source.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    return f'import lzma,base64\nexec(lzma.decompress(base64.b85decode("{packed}")))\n'
