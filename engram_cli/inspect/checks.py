"""Consistency of what ``inspect`` found: tables against the layout, the layout against its
own rules (primes, offsets, multipliers from the variant's seed rule, token map), a GGUF's
keys against its dialect, an output's files against its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engram_cli.inspect.model import Check, Found


def table_checks(f: Found) -> list[Check]:
    lay = f.layout
    out = []
    for t in f.tables:
        i = lay.index_of_tensor(t.layer)
        if i is None:
            out.append(Check(f"layers.{t.layer} has a layout layer", list(lay.tensor_ids), t.layer, False,
                             "the layout does not name this table; check its layer numbering"))
            continue
        s = sum(lay.primes[i])
        pad = t.rows - s
        note = f"sum of primes {s:,}" + (f"; {pad:,} padding rows" if pad > 0 else "")
        out.append(Check(f"rows of layer {lay.layer(i).label()}", int(lay.num_embeddings[i]), t.rows,
                         t.rows == int(lay.num_embeddings[i]) and s <= t.rows, note))
    have = {t.layer for t in f.tables}
    for i, tid in enumerate(lay.tensor_ids):
        if f.tables and tid not in have:
            out.append(Check(f"table of layer {lay.layer(i).label()}", f"layers.{tid}", None, False, "no table found"))
    return out


def layout_checks(lay: Any, config: dict | None) -> list[Check]:
    from engram_cli.layout.layout import exclusive_cumsum

    out = []
    flat = [p for ps in lay.primes for p in ps]
    if lay.variant != "qwen4-exp":
        out.append(Check("primes distinct across layers", len(flat), len(set(flat)), len(set(flat)) == len(flat)))
    out.append(Check("primes are prime", len(flat), sum(_is_prime(p) for p in flat), all(_is_prime(p) for p in flat)))
    for i in range(len(lay.layer_ids)):
        s, n = sum(lay.primes[i]), int(lay.num_embeddings[i])
        name = f"sum of primes vs rows, layer {lay.layer(i).label()}"
        if lay.variant == "qwen4-exp":
            out.append(Check(name, f">= {s:,}", n, s <= n, f"{n - s:,} padding rows (Qwen4-Exp pads to a divisor)"))
        else:
            out.append(Check(name, s, n, s == n))
        offs = exclusive_cumsum(lay.primes[i])
        out.append(Check(f"offsets, layer {lay.layer(i).label()}", "exclusive sums of the primes", "equal" if tuple(lay.offsets[i]) == offs
                         else "differ", tuple(lay.offsets[i]) == offs))
    out += multiplier_checks(lay)
    out += token_map_checks(lay)
    out += config_checks(lay, config)
    return out


def _is_prime(n: int) -> bool:
    from sympy import isprime

    return bool(isprime(int(n)))


def multiplier_checks(lay: Any) -> list[Check]:
    """Pinned multipliers against the variant's seed rule, seeded by each layer's seed id."""
    from engram_cli.layout.multipliers import pcg64_multipliers, splitmix64_multipliers

    out = []
    for i in range(len(lay.layer_ids)):
        ids = lay.layer(i)
        got = [int(m) for m in lay.multipliers[i]]
        name = f"multipliers, layer {ids.label()} (seed id {ids.seed_id})"
        if lay.variant == "qwen4-exp":
            want = splitmix64_multipliers(ids.seed_id, lay.max_ngram_size, lay.vocab_size, lay.seed)
            rule = f"SplitMix64, seed {lay.seed} + 10007 x {ids.seed_id}"
        elif lay.compressed_vocab_size > 0:
            want = pcg64_multipliers(ids.seed_id, lay.max_ngram_size, lay.compressed_vocab_size, lay.seed)
            rule = f"numpy PCG64, seed {lay.seed} + 10007 x {ids.seed_id}"
        else:
            out.append(Check(name, "the seed rule", got, None, "compressed vocab size unknown"))
            continue
        note = rule if got == want else rule + "; other seeds or layer numbering may have been used"
        out.append(Check(name, [str(m) for m in want], [str(m) for m in got], got == want, note))
        out.append(Check(f"multipliers odd, layer {ids.label()}", True, all(m % 2 == 1 for m in got), all(m % 2 == 1 for m in got)))
    return out


def token_map_checks(lay: Any) -> list[Check]:
    tm = lay.token_map
    if lay.variant == "qwen4-exp":
        return []
    if tm is None:
        return [Check("token map", "present", "absent", None, "the layout has no token map; hashing raw ids needs one")]
    tm = np.asarray(tm)
    top = int(tm.max()) + 1 if tm.size else 0
    out = [Check("compressed vocab vs token map", lay.compressed_vocab_size, top, top == lay.compressed_vocab_size,
                 "max compressed id + 1"),
           Check("token map covers the vocab", lay.vocab_size, int(tm.size), int(tm.size) >= lay.vocab_size),
           Check("compressed pad id in range", f"< {lay.compressed_vocab_size}", lay.compressed_pad_id,
                 0 <= lay.compressed_pad_id < lay.compressed_vocab_size)]
    if 0 <= lay.pad_id < tm.size:
        out.append(Check(f"pad id {lay.pad_id} maps to the compressed pad", int(tm[lay.pad_id]), lay.compressed_pad_id,
                         int(tm[lay.pad_id]) == lay.compressed_pad_id))
    return out


def config_checks(lay: Any, config: dict | None) -> list[Check]:
    from engram_cli.layout.config import declared_sizes

    if not config:
        return []
    d = declared_sizes(config)
    out = []
    if d.get("compressed_vocab_size") is not None and lay.token_map is not None:
        out.append(Check("config compressed vocab size", d["compressed_vocab_size"], lay.compressed_vocab_size,
                         d["compressed_vocab_size"] == lay.compressed_vocab_size))
    for i, n in enumerate(d.get("num_embeddings") or []):
        if i < len(lay.layer_ids):
            s = sum(lay.primes[i])
            out.append(Check(f"config engram_num_embeddings, layer {lay.layer(i).label()}", int(n), s, int(n) == s))
    return out


def gguf_checks(g: Any) -> list[Check]:
    from engram_cli.tables import gguf_dialects as D

    out = []
    if g.dialect in D.DIALECTS and g.dialect != "pointer":
        miss = D.missing_keys(g.dialect, g.key_types())
        out.append(Check(f"{g.dialect} keys", list(D.DIALECTS[g.dialect].key_names), f"missing {miss}" if miss else "all",
                         not miss))
    c = g.constants
    ids = [int(x) for x in c.get("layer_ids") or []]
    blk = sorted(t.layer for t in g.tables)
    if ids:
        out.append(Check("layer_ids vs tables", sorted(ids), blk, sorted(ids) == blk))
    rows = c.get("rows")
    if rows is not None and ids:
        by = {t.layer: t.rows for t in g.tables}
        got = [by.get(i) for i in ids]
        out.append(Check("rows key vs table rows", [int(r) for r in rows], got, [int(r) for r in rows] == got))
    offs, primes = c.get("offsets"), c.get("primes")
    if offs is not None and primes is not None and ids and len(primes) == len(offs):
        per = len(primes) // len(ids)
        want = [o for i in range(len(ids)) for o in np.concatenate([[0], np.cumsum(primes[i * per:(i + 1) * per])[:-1]])]
        out.append(Check("offsets key = exclusive sums of primes", "equal", "equal" if [int(x) for x in offs] == [int(x) for x in want]
                         else "differ", [int(x) for x in offs] == [int(x) for x in want]))
    if primes is not None and g.dialect in ("ds4", "both"):
        out.append(Check("primes fit u32 (ds4 reads uint32_t)", f"<= {2**32 - 1}", max(int(p) for p in primes),
                         max(int(p) for p in primes) < 2**32))
    if g.dialect in ("ds4", "both") and g.tables:
        out.append(Check("tables are the last tensors", True, g.tables_last, g.tables_last))
    return out


def output_checks(f: Found) -> list[Check]:
    man = f.manifest
    root = Path(f.path)
    bad = []
    for mf in man.files:
        p = root / mf.name
        if not p.is_file():
            bad.append(f"{mf.name} missing")
        elif p.stat().st_size != mf.bytes:
            bad.append(f"{mf.name} has {p.stat().st_size:,} bytes, manifest {mf.bytes:,}")
    return [Check("files present with the manifest's sizes", len(man.files), len(man.files) - len(bad), not bad,
                  "; ".join(bad[:3]))]


def all_checks(f: Found) -> list[Check]:
    out: list[Check] = []
    if f.layout is not None:
        if f.tables:
            out += table_checks(f)
        out += layout_checks(f.layout, f.config)
    elif f.tables:
        out.append(Check("layout", "engram_layout.json, a config or GGUF hash keys", None, None,
                         "no layout found: head sizes unknown (pass one to engram shard with --layout)"))
    if f.gguf is not None:
        out += gguf_checks(f.gguf)
    if f.manifest is not None:
        out += output_checks(f)
    return out
