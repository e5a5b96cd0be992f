"""``echo-agent evaluate gate``: how often the validity gate publishes, per class of loop, and
how wrong what it publishes is.

Every loop of the given folders goes through the node's own analysis (decode, preprocess,
segment, EF, measure, gate). A loop's class is its truth file's ``negative_class`` (blank,
noise, non_cardiac, wrong_view, lv_cut_off, as ``echo-agent phantom --negative`` writes them),
``good`` for an A4C phantom with truth, or ``real`` for a loop without truth (``--real FILE``,
e.g. pydicom's SonoSite cine). Written to ``--out``: ``gate.csv`` (one row per loop with every
check's evidence, for choosing thresholds), ``gate_summary.json`` and the table printed here.

``--write-reference FILE --reference-data DIR`` first builds the out-of-distribution reference
(``inference.ood``) from the loops in DIR, which should be the models' training split.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASS_GOOD = "good"
CLASS_REAL = "real"
CSV_FIELDS = (
    "file",
    "class",
    "published_ef",
    "ef_true",
    "ef_regression",
    "ef_regression_ungated",
    "ef_disks",
    "ef_disks_ungated",
    "quality_score",
    "lv_coverage",
    "segmentation_confidence",
    "area_consistency",
    "ef_disagreement_points",
    "heart_rate_disagreement_fraction",
    "ood_score",
    "ood_furthest_feature",
    "cavity_edge_contrast",
    "systolic_cavity_edge_contrast",
    "reasons",
)


def add_gate_evaluate_parser(evaluate_actions: Any) -> argparse.ArgumentParser:
    """``evaluate gate``; ``evaluate_actions`` is the ``evaluate`` group's subparsers."""
    p = evaluate_actions.add_parser(
        "gate", help="how often the validity gate publishes, per class, and the published EF error"
    )
    p.add_argument("--data", type=Path, action="append", default=[],
                   help="folder of loops with truth JSON (repeatable)")  # fmt: skip
    p.add_argument("--real", type=Path, action="append", default=[],
                   help="a loop without truth, class 'real' (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("evaluation-gate"), help="output folder")
    p.add_argument("--limit", type=int, default=None, help="at most N loops per folder")
    p.add_argument("--reference-data", type=Path, action="append", default=[],
                   help="training-split loops to build the OOD reference from "
                        "(repeatable: one folder per training data set)")  # fmt: skip
    p.add_argument("--write-reference", type=Path, default=None,
                   help="write the OOD reference here (then evaluate with it)")  # fmt: skip
    p.set_defaults(func=cmd_evaluate_gate)
    return p


def cmd_evaluate_gate(args: argparse.Namespace, config: Any) -> int:
    import dataclasses

    from inference.gate import GateSettings
    from inference.model_cache import load_models
    from pacs_agent.analysis import model_settings

    models = load_models(model_settings(config))
    if args.write_reference is not None:
        if not args.reference_data:
            raise ValueError("--write-reference needs --reference-data DIR (the training split)")
        reference = write_reference(args.reference_data, args.write_reference, models, args.limit)
        models = dataclasses.replace(
            models, gate=GateSettings(models.gate.thresholds, ood_reference=reference)
        )
        print(f"OOD reference from {reference.n_loops} loops written to {args.write_reference}")
    cases = [case for folder in args.data for case in _cases(folder)[: args.limit]] + [
        (path, None) for path in args.real
    ]
    if not cases:
        raise ValueError("evaluate gate needs --data DIR (loops with truth JSON) or --real FILE")
    started = time.perf_counter()
    rows = [_evaluate_case(path, truth, models, config) for path, truth in cases]
    summary = summarise(rows)
    summary.update(
        models=models.description,
        thresholds=dataclasses.asdict(models.gate.thresholds),
        ood_reference=getattr(models.gate.ood_reference, "source", None),
        wall_s=round(time.perf_counter() - started, 1),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "gate.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "gate_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_gate_table(summary))
    print(f"written: {args.out / 'gate.csv'}, gate_summary.json")
    return 0


def write_reference(
    folders: Path | list[Path], target: Path, models: Any, limit: int | None
) -> Any:
    """Features of every loop in ``folders`` (at most ``limit`` per folder) through the
    models -> an ``OodReference`` file. Models trained on several data sets need loops of
    each, or the loops of the others read as out of distribution."""
    from inference.analyze import Networks, analyse
    from inference.ood import build_reference, loop_features

    folders = [folders] if isinstance(folders, Path) else list(folders)
    paths: list[Path] = []
    for folder in folders:
        found = sorted(folder.glob("*.dcm"))
        found = [p for p in found if _truth(p) is None or _truth(p).get("view", "A4C") == "A4C"]
        paths += found[:limit]
    features = []
    segmentation_only = Networks(models.segmenter, None, models.params)
    for path in paths:
        analysis = analyse(path, segmentation_only).analysis
        pre = analysis.preprocessed
        features.append(loop_features(pre.frames, pre.sector_mask, analysis.lv_probability))
    reference = build_reference(
        np.asarray(features),
        source=f"{len(features)} loops of {', '.join(f.name for f in folders)}, "
        f"models: {models.description}",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(reference.to_json(), indent=1) + "\n")
    return reference


def _evaluate_case(path: Path, truth: dict | None, models: Any, config: Any) -> dict[str, Any]:
    from inference.analyze import analyse
    from inference.decode import DecodeError
    from inference.preprocess import PreprocessError

    klass = _class_of(truth)
    row: dict[str, Any] = {key: None for key in CSV_FIELDS}
    row.update(file=path.name, **{"class": klass})
    row["ef_true"] = None if truth is None or klass != CLASS_GOOD else truth.get("ef_percent")
    try:
        result = analyse(path, models, all_clip_stride=config.models.all_clip_stride)
    except (DecodeError, PreprocessError) as exc:  # nothing to measure: nothing published
        row.update(published_ef=False, reasons=f"analysis refused: {exc}")
        print(f"{path.name} [{klass}]: analysis refused ({exc})", flush=True)
        return row
    m, raw = result.analysis.measurements, result.analysis.ungated
    evidence = m.gate.to_json() if m.gate is not None else {}
    row.update(
        published_ef=m.ef_percent is not None or m.ef_disks_percent is not None,
        ef_regression=m.ef_percent,
        ef_regression_ungated=None if raw is None else raw.ef_percent,
        ef_disks=m.ef_disks_percent,
        ef_disks_ungated=None if raw is None else raw.ef_disks_percent,
        quality_score=m.quality_score,
        reasons=" | ".join(
            sorted({v.reason for v in m.validity.values() if not v.measured and v.reason})
        ),
        **{key: evidence.get(key) for key in CSV_FIELDS if key in evidence},
    )
    print(
        f"{path.name} [{klass}]: {'published' if row['published_ef'] else 'withheld'}, "
        f"quality {m.quality_score}, {json.dumps(evidence)}",
        flush=True,
    )
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class: loops, share with an EF published, published EF error (good loops only)."""
    classes: dict[str, Any] = {}
    for klass in sorted({r["class"] for r in rows}):
        group = [r for r in rows if r["class"] == klass]
        published = [r for r in group if r["published_ef"]]
        entry: dict[str, Any] = {
            "loops": len(group),
            "published": len(published),
            "published_fraction": round(len(published) / len(group), 4),
        }
        if klass == CLASS_GOOD:
            entry.update(
                ef_mae_published_regression=_mae(published, "ef_regression"),
                ef_mae_published_disks=_mae(published, "ef_disks"),
                ef_mae_ungated_regression=_mae(group, "ef_regression_ungated"),
                ef_mae_ungated_disks=_mae(group, "ef_disks_ungated"),
            )
        classes[klass] = entry
    return {"classes": classes, "loops": len(rows)}


def _mae(rows: list[dict[str, Any]], key: str) -> float | None:
    errors = [
        abs(float(r[key]) - float(r["ef_true"]))
        for r in rows
        if r.get(key) is not None and r.get("ef_true") is not None
    ]
    return round(float(np.mean(errors)), 2) if errors else None


def format_gate_table(summary: dict[str, Any]) -> str:
    lines = [
        "| class | loops | EF published | published EF MAE (regression / disks) "
        "| ungated EF MAE (regression / disks) |",
        "|---|---:|---:|---:|---:|",
    ]
    for klass, e in summary["classes"].items():
        published = f"{e['published']} ({100 * e['published_fraction']:.0f} %)"
        mae = ungated = "-"
        if klass == CLASS_GOOD:
            mae = f"{_fmt(e['ef_mae_published_regression'])} / {_fmt(e['ef_mae_published_disks'])}"
            ungated = f"{_fmt(e['ef_mae_ungated_regression'])} / {_fmt(e['ef_mae_ungated_disks'])}"
        lines.append(f"| {klass} | {e['loops']} | {published} | {mae} | {ungated} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _truth(path: Path) -> dict | None:
    truth_path = path.with_suffix(".json")
    return json.loads(truth_path.read_text()) if truth_path.is_file() else None


def _cases(folder: Path) -> list[tuple[Path, dict]]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    cases = []
    for path in sorted(folder.glob("*.dcm")):
        truth = _truth(path)
        if truth is not None and (truth.get("negative_class") or truth.get("view") == "A4C"):
            cases.append((path, truth))
    return cases


def _class_of(truth: dict | None) -> str:
    if truth is None:
        return CLASS_REAL
    return str(truth.get("negative_class") or CLASS_GOOD)
