"""The paper's findings F1-F6, tested on a run's tidy results.

Each finding is measured on tables in the paper's layout, so the same code measures our run
(tables built from results) and the paper (its published tables): "measured" and "paper"
hold the same numbers. `holds` is None when the results cannot test the finding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from mmlib.experiments import tables as T
from mmlib.experiments.paper import paper_finding, paper_table

#: The thresholds that turn each finding into a test (absolute Dice).
CRITERIA: dict[str, float] = {
    "f1_max_all_modality_cost": 0.05,  # F1 'at little cost': all-modality Dice lost to drop
    "f2_tolerance": 0.02,              # F2 'about as well': MD average >= SD average - this
    "f3_margin": 0.05,                 # F3 'far better': MD-drop beats each comparator by this
    "f4_margin": 0.0,                  # F4 'better'
    "f5_default_chance": 0.05,         # F5 chance Dice when no threshold baseline was run
    "f6_min_progressive_gain": 0.0,    # F6 'add a little more': mean progressive - finetune
}
FINDINGS = ("F1", "F2", "F3", "F4", "F5", "F6")
Measured = dict[str, Any]


def _num(x: Any) -> float | None:
    """A plain float for JSON, None for NaN/missing."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else round(x, 4)


def _get(table: pd.DataFrame, row: str, col: Any) -> float | None:
    if row not in table.index or col not in table.columns:
        return None
    return _num(table.loc[row, col])


def _verdict(checks: list[tuple[str, bool]], untested: list[str]) -> tuple[bool | None, str]:
    """holds = every testable check passes; None when nothing could be tested."""
    if not checks:
        return None, "not enough results: " + ("; ".join(untested) or "no comparable cells")
    failed = [name for name, ok in checks if not ok]
    why = (f"fails: {'; '.join(failed)}" if failed
           else f"passes {len(checks)}/{len(checks)} checks: {'; '.join(name for name, _ in checks)}")
    if untested:
        why += f" (not tested: {'; '.join(untested)})"
    return not failed, why


# -- F1 (Table 2) -------------------------------------------------------------------------
def _measure_f1(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[2]
    out = {}
    for arch in T.ARCHITECTURES:
        out[arch] = {
            "dice_all_no_drop": _get(t, "all modalities", (arch, "dice")),
            "dice_all_drop": _get(t, "modality drop", (arch, "dice")),
            "change_no_drop": _get(t, "all modalities", (arch, "dice_change")),
            "change_drop": _get(t, "modality drop", (arch, "dice_change")),
        }
    return out


def _judge_f1(m: Measured) -> tuple[bool | None, str]:
    cost = CRITERIA["f1_max_all_modality_cost"]
    checks, untested = [], []
    for arch, v in m.items():
        if None in v.values():
            untested.append(f"{arch} (needs SD models with and without drop)")
            continue
        checks.append((f"{arch}: |change| {abs(v['change_drop']):.3f} with drop < "
                       f"{abs(v['change_no_drop']):.3f} without",
                       abs(v["change_drop"]) < abs(v["change_no_drop"])))
        lost = v["dice_all_no_drop"] - v["dice_all_drop"]
        checks.append((f"{arch}: all-modality Dice lost to drop {lost:.3f} <= {cost}", lost <= cost))
    return _verdict(checks, untested)


def _f1_results(df: pd.DataFrame) -> pd.DataFrame:
    """SD results restricted, per architecture, to databases run both with and without drop."""
    sd = df[df["training"] == "SD"]
    keep = []
    for arch, of_arch in sd.groupby("arch"):
        both = set(of_arch.loc[of_arch["drop"], "database"]) & set(of_arch.loc[~of_arch["drop"], "database"])
        keep.append(of_arch[of_arch["database"].isin(both)])
    return pd.concat(keep) if keep else sd


# -- F2 (Table 3) -------------------------------------------------------------------------
def _measure_f2(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[3]
    databases = [c for c in t.columns if c not in ("Avg", "seeds")]
    md = "MultiUnet-MD (drop)"
    sd = next((r for r in ("Unet-SD (all mods)", "Unet-SD (drop)")
               if r in t.index and any(_get(t, r, d) is not None and _get(t, md, d) is not None
                                       for d in databases)), None)
    if sd is None:
        return {"sd_row": None, "databases": [], "md_average": None, "sd_average": None, "gain": {}}
    common = [d for d in databases if _get(t, sd, d) is not None and _get(t, md, d) is not None]
    gain = {d: _num(t.loc[md, d] - t.loc[sd, d]) for d in common}
    return {"sd_row": sd, "databases": common,
            "md_average": _num(np.mean([t.loc[md, d] for d in common])),
            "sd_average": _num(np.mean([t.loc[sd, d] for d in common])), "gain": gain}


def _judge_f2(m: Measured) -> tuple[bool | None, str]:
    tol = CRITERIA["f2_tolerance"]
    if not m["databases"]:
        return _verdict([], ["needs MultiUnet-MD (drop) and Unet-SD on a common database"])
    ok = m["md_average"] >= m["sd_average"] - tol
    best = max(m["gain"], key=m["gain"].get)
    holds, why = _verdict([(f"MD average {m['md_average']:.3f} >= {m['sd_row']} average "
                            f"{m['sd_average']:.3f} - {tol} over {len(m['databases'])} databases", ok)], [])
    return holds, why + f"; largest gain on {best} ({m['gain'][best]:+.3f})"


# -- F3 and F4 (Table 4) ------------------------------------------------------------------
def _measure_f3(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[4]
    return {col: {row: _get(t, row, col) for row in ("all five (drop)", "all five (all mods)", "ATLAS only")}
            for col in ("ISLES (T1)", "ISLES (T1,T2)")}


def _judge_f3(m: Measured) -> tuple[bool | None, str]:
    margin = CRITERIA["f3_margin"]
    checks, untested = [], []
    for col, v in m.items():
        for other in ("ATLAS only", "all five (all mods)"):
            if col == "ISLES (T1,T2)" and other == "ATLAS only":
                continue  # the ATLAS-only model has no T2 channel (n/a in the paper)
            name = f"{col}: MD drop vs {other}"
            if v["all five (drop)"] is None or v[other] is None:
                untested.append(name)
                continue
            checks.append((f"{name}: {v['all five (drop)']:.3f} > {v[other]:.3f} + {margin}",
                           v["all five (drop)"] > v[other] + margin))
    return _verdict(checks, untested)


def _measure_f4(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[4]
    return {row: _get(t, row, "Tumor 2 (T1)") for row in ("all five (drop)", "BRATS only (drop)")}


def _judge_f4(m: Measured) -> tuple[bool | None, str]:
    margin = CRITERIA["f4_margin"]
    md, brats = m["all five (drop)"], m["BRATS only (drop)"]
    if md is None or brats is None:
        return _verdict([], ["Tumor 2 (T1) needs all five (drop) and BRATS only (drop)"])
    return _verdict([(f"Tumor 2 (T1): MD drop {md:.3f} > BRATS only (drop) {brats:.3f} + {margin}",
                      md > brats + margin)], [])


# -- F5 (Table 5) -------------------------------------------------------------------------
def _measure_f5(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[5]
    out = {}
    for db in [c for c in t.columns if c != "seeds"]:
        zero = _get(t, "Multi-Unet (drop), FLAIR or T1", db)
        if zero is None:
            continue
        base = chance.get(db)
        out[db] = {"zero_shot": zero,
                   "chance": _num(base) if base is not None else CRITERIA["f5_default_chance"],
                   "chance_from": "threshold baseline" if base is not None else "default",
                   "upper_bound": _get(t, "Unet-SD (upper bound), all", db)}
    return out


def _judge_f5(m: Measured) -> tuple[bool | None, str]:
    checks, untested = [], []
    for db, v in m.items():
        checks.append((f"{db}: 0-shot {v['zero_shot']:.3f} > chance {v['chance']:.3f} ({v['chance_from']})",
                       v["zero_shot"] > v["chance"]))
        if v["upper_bound"] is None:
            untested.append(f"{db} upper bound")
        else:
            checks.append((f"{db}: 0-shot < SD upper bound {v['upper_bound']:.3f}",
                           v["zero_shot"] < v["upper_bound"]))
    if not m:
        untested.append("needs leave-one-out Multi-Unet (drop) results")
    return _verdict(checks, untested)


def _chance(df: pd.DataFrame) -> dict[str, float]:
    """Per database: the threshold baseline's Dice (on the 'FLAIR or T1' subset if run)."""
    out = {}
    base = df[df["arch"] == "threshold"]
    for db in base["database"].unique():
        of_db = base[base["database"] == db]
        sub = T.flair_or_t1(df, db)
        value, _ = T.cell(of_db, {"subset": sub} if (of_db["subset"] == sub).any() else {})
        if not math.isnan(value):
            out[db] = value
    return out


# -- F6 (Table 6) -------------------------------------------------------------------------
def _measure_f6(tables: dict[int, pd.DataFrame], chance: dict[str, float]) -> Measured:
    t = tables[6]
    finetune_gain = {target: _num(t.loc[target, "limited finetune"] - t.loc[target, "limited scratch"])
                     for target in t.index}
    progressive_gain = {f"{target} {labels}": _num(t.loc[target, f"{labels} progressive"]
                                                   - t.loc[target, f"{labels} finetune"])
                        for target in t.index for labels in ("limited", "all")}
    all_gain = {target: _num(t.loc[target, "all finetune"] - t.loc[target, "all scratch"])
                for target in t.index}
    kept = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    finetune_gain, progressive_gain, all_gain = kept(finetune_gain), kept(progressive_gain), kept(all_gain)
    mean = lambda d: _num(np.mean(list(d.values()))) if d else None  # noqa: E731
    return {"limited_finetune_minus_scratch": finetune_gain,
            "limited_targets_finetune_better": sum(v > 0 for v in finetune_gain.values()),
            "limited_mean_gain": mean(finetune_gain), "all_labels_mean_gain": mean(all_gain),
            "progressive_minus_finetune": progressive_gain,
            "progressive_mean_gain": mean(progressive_gain)}


def _judge_f6(m: Measured) -> tuple[bool | None, str]:
    checks, untested = [], []
    gains = m["limited_finetune_minus_scratch"]
    if gains:
        better = m["limited_targets_finetune_better"]
        checks.append((f"limited labels: finetune > scratch on {better}/{len(gains)} targets (majority)",
                       better > len(gains) / 2))
    else:
        untested.append("limited-label finetune vs scratch")
    if m["progressive_mean_gain"] is not None:
        need = CRITERIA["f6_min_progressive_gain"]
        checks.append((f"progressive - finetune {m['progressive_mean_gain']:+.3f} on average "
                       f"(over {len(m['progressive_minus_finetune'])} cells) >= {need}",
                       m["progressive_mean_gain"] >= need))
    else:
        untested.append("progressive vs finetune")
    return _verdict(checks, untested)


_TESTS: dict[str, tuple[Callable, Callable]] = {
    "F1": (_measure_f1, _judge_f1), "F2": (_measure_f2, _judge_f2), "F3": (_measure_f3, _judge_f3),
    "F4": (_measure_f4, _judge_f4), "F5": (_measure_f5, _judge_f5), "F6": (_measure_f6, _judge_f6),
}


def _our_tables(results: pd.DataFrame) -> dict[int, pd.DataFrame]:
    df = T.tidy_results(results)
    return {2: T.table2(_f1_results(df)), 3: T.table3(df), 4: T.table4(df), 5: T.table5(df),
            6: T.table6(df)}


def _paper_tables() -> dict[int, pd.DataFrame]:
    return {n: paper_table(n) for n in (2, 3, 4, 5, 6)}


def paper_findings() -> dict[str, dict[str, Any]]:
    """The same tests applied to the paper's own numbers: {F: {"paper", "holds", "why"}}."""
    out = {}
    for name, (measure, judge) in _TESTS.items():
        m = measure(_paper_tables(), {})
        holds, why = judge(m)
        out[name] = {"paper": m, "holds": holds, "why": why}
    return out


def evaluate_findings(results: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Test F1-F6 on tidy `results`: per finding {finding, measured, paper, holds, why}."""
    ours = _our_tables(results)
    chance = _chance(T.tidy_results(results))
    paper = _paper_tables()
    out = {}
    for name, (measure, judge) in _TESTS.items():
        measured = measure(ours, chance)
        holds, why = judge(measured)
        out[name] = {"finding": paper_finding(name), "measured": measured,
                     "paper": measure(paper, {}), "holds": holds, "why": why}
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


def write_findings(results: pd.DataFrame, path: str | Path) -> Path:
    """Evaluate the findings and write them as JSON; `path` is a .json file or a folder
    (then <path>/findings.json). Returns the file written."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "findings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    findings = evaluate_findings(results)
    path.write_text(json.dumps({"criteria": CRITERIA, "findings": _jsonable(findings)}, indent=2))
    return path


def _verdict_word(holds: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "not tested"}[holds]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def findings_markdown(findings: dict[str, dict[str, Any]]) -> str:
    """A Markdown section per finding: statement, verdict, why, and measured vs paper."""
    lines = []
    for name, f in findings.items():
        lines += [f"### {name}: {_verdict_word(f['holds'])}", "", f["finding"], "", f"*Why:* {f['why']}", ""]
        ours, paper = _flat(f["measured"]), _flat(f["paper"])
        keys = [k for k in dict.fromkeys([*ours, *paper]) if not isinstance(ours.get(k, paper.get(k)), (list, str))]
        if keys:
            lines += ["| quantity | this run | paper |", "|---|---|---|"]
            fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
            lines += [f"| {k} | {fmt(ours.get(k))} | {fmt(paper.get(k))} |" for k in keys]
            lines.append("")
    return "\n".join(lines)


__all__ = ["CRITERIA", "FINDINGS", "evaluate_findings", "paper_findings", "write_findings",
           "findings_markdown"]
