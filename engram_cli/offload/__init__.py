"""Offload measurement: row gathers per tier, locality with the real hash, the projection model, the end-to-end check.

One job per module. Tiers: ``host`` + ``hostbench``, ``files`` + ``filebench``, ``gpu`` + ``gpubench``
(+ ``triton_gather``). Inputs: ``indices`` (fresh index streams), ``corpus`` (bundled text, ``--trace``).
Locality: ``locality``, ``lru``. Other timings: ``hashrate``, ``backbone``. Model: ``projection`` (pure),
``scenarios`` (measured figures -> projection inputs). Check: ``prefetch``, ``validate``. Report: ``profile``,
``plots``; ``run`` orchestrates. Helpers: ``stats``, ``verify``. Nothing here prints; results are dataclasses.
"""
