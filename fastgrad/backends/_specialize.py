"""Compiled copies of template kernels that Numba's disk cache finds again in a new process.

A kernel specialized for one activation must bind that activation's compiled scalar
formulas. A closure cannot carry them: Numba's cache index key hashes a closure's cell
contents, and a cell holding a compiled dispatcher pickles differently in every process (it
carries a random uuid), so every process missed the cache, recompiled (seconds per kernel)
and appended another .nbc file. `specialize` binds them as *globals* instead: a copy of a
module-level template function whose globals are a namespace holding the formulas, compiled
under its own ``__qualname__`` (Numba names a cache entry after the module and qualname).

Staleness: Numba drops a cache entry only when the source file of the function itself
changes, but these kernels inline code from other files (the scalar formulas, the
vectorized math, the activation and loss tables). `SOURCE_TAG`, a hash of those files
computed once at import, is part of every qualname made here, so editing any of them gives
every such kernel a new cache entry instead of loading the old machine code.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numba import njit

_PACKAGE = Path(__file__).resolve().parent.parent

INLINED_SOURCES = ("activations.py", "scalar_math.py", "losses.py", "update_math.py",
                   "backends/numba_math.py")
"""Files (relative to the fastgrad package) whose code is compiled into kernels defined
elsewhere: a change to any of them must invalidate those kernels' cache entries."""


def source_tag(package: Path = _PACKAGE, sources: tuple[str, ...] = INLINED_SOURCES) -> str:
    """First 12 hex digits of the SHA-256 over `sources`' names and contents (a missing
    file hashes as such: Numba cannot cache without source files anyway)."""
    h = hashlib.sha256()
    for rel in sources:
        h.update(rel.encode() + b"\0")
        try:
            h.update((package / rel).read_bytes())
        except OSError:
            h.update(b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:12]


SOURCE_TAG = source_tag()

_TAG = re.compile(r"[A-Za-z0-9_]+")  # the qualname is part of the cache file names


def specialize(template: types.FunctionType, namespace: dict[str, Any], tag: str,
               **jit_options: Any) -> Callable:
    """``njit(**jit_options)`` of a copy of `template` (a module-level function) whose
    globals are `namespace`, with ``__qualname__ = f"{name}__{tag}__{SOURCE_TAG}"``.

    `namespace` binds every global the template reads, typically ``{**module globals,
    **overrides}``; it may be shared by several copies and filled in after this call
    (Numba reads globals when it compiles). It must hold the ``"__name__"`` of the real,
    importable module: loading from the cache rebuilds the kernel's environment by
    importing that module. `tag` names the specialization (e.g. activation, dtype,
    variant) and must differ between copies that bind different things, since each
    (module, qualname) pair is one cache entry.
    """
    if not isinstance(template, types.FunctionType) or template.__closure__ is not None:
        raise TypeError(f"template must be a plain module-level function (no closure), got "
                        f"{template!r}")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag must be letters, digits and underscores (it names cache "
                         f"files), got {tag!r}")
    module = namespace.get("__name__")
    if module not in sys.modules:
        raise ValueError(f"namespace['__name__'] must name an imported module (Numba imports "
                         f"it when loading from the cache), got {module!r}")
    fn = types.FunctionType(template.__code__, namespace, template.__name__,
                            template.__defaults__)
    fn.__qualname__ = f"{template.__name__}__{tag}__{SOURCE_TAG}"
    fn.__doc__ = template.__doc__
    return njit(**jit_options)(fn)


def njit_tagged(**jit_options: Any) -> Callable[[types.FunctionType], Callable]:
    """Decorator: ``njit(**jit_options)`` for a module-level kernel that inlines code of
    `INLINED_SOURCES` (a scalar formula, numba_math's exp): `SOURCE_TAG` joins its
    ``__qualname__``, so its cache entry changes with those files, as `specialize` does."""
    def decorate(fn: types.FunctionType) -> Callable:
        fn.__qualname__ = f"{fn.__qualname__}__{SOURCE_TAG}"
        return njit(**jit_options)(fn)
    return decorate


def cache_stats(*roots: Any) -> dict[str, dict[str, int]]:
    """Disk-cache hits and misses (a miss is a compile) of every Numba dispatcher found in
    `roots` (module namespaces, dicts, tuples and lists of them, searched recursively) and
    in the globals of those found (the formulas and callees a specialized kernel binds),
    by ``module.qualname``; only those used in this process (hits + misses > 0)."""
    from numba.core.dispatcher import Dispatcher

    found: dict[str, Dispatcher] = {}
    visited: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in visited:
            return
        visited.add(id(obj))
        if isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)
        elif isinstance(obj, Dispatcher):
            found[f"{obj.py_func.__module__}.{obj.py_func.__qualname__}"] = obj

    visit(list(roots))
    for dispatcher in list(found.values()):
        visit(dispatcher.py_func.__globals__)
    stats = {}
    for name, dispatcher in sorted(found.items()):
        hits = sum(dispatcher.stats.cache_hits.values())
        misses = sum(dispatcher.stats.cache_misses.values())
        if hits or misses:
            stats[name] = {"hits": hits, "misses": misses}
    return stats
