"""Hash-head geometry of each table, from an :class:`EngramLayout` or what a source records.

Only the layout knows primes; this module matches its layers to the tables found by the
tensor-name index (never by position) and checks that the sizes agree (sum of primes == rows,
or rows == the padded size for Qwen4-Exp).
"""

from __future__ import annotations

from typing import Any

from engram_cli.errors import LayoutMismatchError
from engram_cli.tables.model import Geometry, TableInfo


def geometries_from_layout(layout: Any, tables: tuple[TableInfo, ...]) -> tuple[Geometry, ...]:
    """Head sizes of every table, matched by the layout's tensor-name index (``layers.{i}``).

    A table's ``layer_id`` is the index its tensor names carry; the layout maps it to its
    Engram layer (Qwen4-Exp's 1-based ``ple_layer_ids`` name ``layers.{id - 1}``)."""
    out = []
    for t in tables:
        i = layout.index_of_tensor(t.layer_id)
        if i is None:
            known = ", ".join(lid.label() for lid in layout.layers)
            raise LayoutMismatchError(f"table layers.{t.layer_id} has no Engram layer in the layout "
                                      f"(tensor indices {list(layout.tensor_ids)}; layers {known})",
                                      hint="check the layout/config belongs to this checkpoint")
        primes = tuple(int(p) for p in layout.primes[i])
        total = sum(primes)
        expect = int(layout.num_embeddings[i]) if getattr(layout, "num_embeddings", None) is not None else total
        if t.rows != expect or total > t.rows:
            raise LayoutMismatchError(
                f"layer {layout.layer(i).label()}: table layers.{t.layer_id} has {t.rows} rows but the layout "
                f"gives {expect} (sum of primes {total})",
                hint="check the layout/config belongs to this checkpoint",
            )
        out.append(Geometry(t.layer_id, primes, t.rows))
    return tuple(out)


def resolve(tables: tuple[TableInfo, ...], known: tuple[Geometry, ...], layout: Any | None) -> tuple[Geometry, ...]:
    if layout is not None:
        return geometries_from_layout(layout, tables)
    if known and len(known) == len(tables):
        return known
    return ()
