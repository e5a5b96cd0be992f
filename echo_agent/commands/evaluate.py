"""``echo-agent evaluate --data DIR``: how close the node's measurements come to the truth.

``DIR`` holds DICOM loops with a truth file beside each (``NAME.json``, as ``echo-agent
phantom`` writes them, with the per-frame LV masks in ``masks_file``). Every A4C loop goes
through the same code as a job (decode, preprocess, segment, EF, measure), so the numbers
describe the node, not the networks alone. Printed and written to ``--out``: Dice (ED, ES,
overall) on the true beats' frames; EF MAE, RMSE, R2 and AUC at 40/50/70 % for the regression EF
and the method-of-disks EF; a Bland-Altman plot (PNG); and a per-case CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

CSV_FIELDS = (
    "file",
    "ef_true",
    "ef_regression",
    "ef_disks",
    "dice_ed",
    "dice_es",
    "edv_true_ml",
    "edv_ml",
    "esv_true_ml",
    "esv_ml",
    "hr_true_bpm",
    "hr_bpm",
    "flags",
)


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="measurements against truth on a phantom test set (Dice, EF errors)"
    )
    parser.add_argument("--data", type=Path, help="DICOM loops with truth JSON")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N A4C loops")
    parser.set_defaults(func=cmd_evaluate)
    from echo_agent.commands.evaluate_gate import add_gate_evaluate_parser
    from echo_agent.commands.llm import add_llm_evaluate_parser

    actions = parser.add_subparsers(dest="evaluate_command", metavar="WHAT")
    add_llm_evaluate_parser(actions)  # echo-agent evaluate llm: drafts and answers, grounded
    add_gate_evaluate_parser(actions)  # echo-agent evaluate gate: what the gate publishes
    return parser


def cmd_evaluate(args: argparse.Namespace, config: Any) -> int:
    from inference.analyze import analyse
    from inference.evaluation import dice
    from inference.model_cache import load_models
    from inference.plots import bland_altman_png
    from pacs_agent.analysis import model_settings

    if args.data is None:
        raise ValueError("evaluate needs --data DIR (or: echo-agent evaluate llm --help)")
    cases = _a4c_cases(args.data)[: args.limit]
    if not cases:
        raise ValueError(f"{args.data}: no A4C loop with a truth file (NAME.dcm + NAME.json)")
    models = load_models(model_settings(config))
    rows: list[dict[str, Any]] = []
    dice_ed: list[float] = []
    dice_es: list[float] = []
    started = time.perf_counter()
    for path, truth in cases:
        result = analyse(path, models, all_clip_stride=config.models.all_clip_stride)
        m = result.analysis.measurements
        predicted = result.analysis.lv_masks_source()
        true_masks = np.load(path.parent / truth["masks_file"])["masks"]
        case_ed = [
            dice(predicted[b["ed_frame"]], true_masks[b["ed_frame"]]) for b in truth["beats"]
        ]
        case_es = [
            dice(predicted[b["es_frame"]], true_masks[b["es_frame"]]) for b in truth["beats"]
        ]
        dice_ed += case_ed
        dice_es += case_es
        rows.append(
            {
                "file": path.name,
                "ef_true": truth["ef_percent"],
                "ef_regression": m.ef_percent,
                "ef_disks": m.ef_disks_percent,
                "dice_ed": float(np.mean(case_ed)),
                "dice_es": float(np.mean(case_es)),
                "edv_true_ml": truth["edv_ml"],
                "edv_ml": m.edv_ml,
                "esv_true_ml": truth["esv_ml"],
                "esv_ml": m.esv_ml,
                "hr_true_bpm": truth["heart_rate_bpm"],
                "hr_bpm": m.heart_rate_bpm,
                "flags": " ".join(flag.code for flag in m.flags),
            }
        )
        print(
            f"{path.name}: EF true {truth['ef_percent']:.1f}, regression {_fmt(m.ef_percent)}, "
            f"disks {_fmt(m.ef_disks_percent)}, Dice ED {np.mean(case_ed):.3f} "
            f"ES {np.mean(case_es):.3f}",
            flush=True,
        )
    truth_ef = [r["ef_true"] for r in rows]
    summary: dict[str, Any] = {
        "cases": len(rows),
        "models": models.description,
        "demo_models": models.demo,
        "dice": {
            "ed": float(np.mean(dice_ed)),
            "es": float(np.mean(dice_es)),
            "overall": float(np.mean(dice_ed + dice_es)),
        },
        "ef_regression": _published_agreement([r["ef_regression"] for r in rows], truth_ef),
        "ef_disks": _published_agreement([r["ef_disks"] for r in rows], truth_ef),
        "missing": {
            "ef_regression": sum(r["ef_regression"] is None for r in rows),
            "ef_disks": sum(r["ef_disks"] is None for r in rows),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    written = [str(args.out / "cases.csv"), "summary.json"]
    if summary["ef_regression"] or summary["ef_disks"]:  # else the gate published no EF
        bland_altman_png(
            [
                ("regression", [r["ef_regression"] for r in rows], truth_ef),
                ("method of disks", [r["ef_disks"] for r in rows], truth_ef),
            ],
            args.out / "bland_altman.png",
        )
        written.append("bland_altman.png")
    print(format_summary(summary))
    print(f"written: {', '.join(written)}")
    return 0


def _published_agreement(measured: list[float | None], truth: list[float]) -> dict[str, Any] | None:
    """The agreement of the published values; None when the validity gate published none (on
    loops unlike the training data it may withhold every EF: that is a result, not an error)."""
    from inference.evaluation import agreement

    if all(m is None for m in measured):
        return None
    return agreement(measured, truth).to_json()


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"models: {summary['models']}",
        f"cases: {summary['cases']}",
        "| metric | regression EF | method-of-disks EF |",
        "|---|---:|---:|",
    ]
    reg, disks = summary["ef_regression"], summary["ef_disks"]

    def cell(stats: dict[str, Any] | None, key: str, threshold: str | None = None) -> str:
        if stats is None:
            return "none published"
        return _fmt(stats["auc"][threshold] if threshold else stats[key])

    for key, label in (
        ("mae", "MAE (points)"),
        ("rmse", "RMSE (points)"),
        ("r2", "R2"),
        ("bias", "bias (points)"),
        ("n", "loops"),
    ):
        lines.append(f"| {label} | {cell(reg, key)} | {cell(disks, key)} |")
    for threshold in ("40", "50", "70"):
        lines.append(
            f"| AUC EF < {threshold} % | {cell(reg, 'auc', threshold)} "
            f"| {cell(disks, 'auc', threshold)} |"
        )
    if reg is None or disks is None:
        lines.append(
            f"none published: the validity gate withheld that EF on all {summary['cases']} "
            "loops (reasons in cases.csv, column flags)"
        )
    d = summary["dice"]
    lines.append(f"Dice: ED {d['ed']:.3f}, ES {d['es']:.3f}, overall {d['overall']:.3f}")
    return "\n".join(lines)


def _a4c_cases(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    cases = []
    for path in sorted(folder.glob("*.dcm")):
        truth_path = path.with_suffix(".json")
        if not truth_path.is_file():
            continue
        truth = json.loads(truth_path.read_text())
        if truth.get("view") == "A4C" and truth.get("masks_file"):
            cases.append((path, truth))
    return cases


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.3f}" if abs(float(value)) < 10 else f"{float(value):.2f}"
