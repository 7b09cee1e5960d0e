"""Whether the compiled (numba) kernels may run: numba importable and ``ENGRAM_NO_NUMBA`` unset
or 0. Checked at every call (tests flip it) and cheap: nothing is imported here."""

from __future__ import annotations

import importlib.util
import os


def numba_enabled() -> bool:
    if os.environ.get("ENGRAM_NO_NUMBA", "").strip() not in ("", "0"):
        return False
    return importlib.util.find_spec("numba") is not None


_BLAS_MODULES = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")


def prepare_numba() -> None:
    """Import numba's array support once, without SciPy's BLAS (call before a kernel module).

    numba's first compile or cache load imports ``numba.np.arraymath``, which imports
    ``scipy.linalg`` only to learn whether ``np.dot`` & co. can be compiled: 0.2-0.4 s of every
    process that runs a kernel. None of engram's kernels uses BLAS, so the import is made with
    SciPy's BLAS modules hidden (numba then records "no BLAS" for this process; ``np.dot``
    inside an ``njit`` function would fail to compile) and they are put back at once, so SciPy
    itself stays importable. Idempotent (a no-op once numba's array support is loaded). The
    kernel modules call it before they import numba, so every importer gets it."""
    import sys

    if "numba.np.arraymath" in sys.modules:
        return
    saved = {name: sys.modules.get(name) for name in _BLAS_MODULES}
    try:
        for name in _BLAS_MODULES:
            if saved[name] is None:
                sys.modules[name] = None  # type: ignore[assignment]  # import of it raises ImportError
        import numba.np.arraymath  # noqa: F401
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
