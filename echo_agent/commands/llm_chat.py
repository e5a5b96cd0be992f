"""``echo-agent evaluate chat`` and ``echo-agent train llm --stage 2 --qa``: the study chat's
evaluation (``llm.evaluate_chat``) and its text-only stage-2 adapter (``llm.chat_adapter``
trained on ``llm.qa_dataset``).

Registered by ``echo_agent.commands.llm`` (``evaluate chat`` beside ``evaluate llm``; ``--qa``
on ``train llm``). torch and transformers load only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_STUDIES = 20
DEFAULT_QUESTIONS = 120
DEFAULT_QA_PAIRS = 3000


def add_chat_evaluate_parser(evaluate_actions: Any, add_model_options: Any) -> None:
    """``evaluate chat``; ``add_model_options`` adds ``--model``/``--device``/``--threads``."""
    p = evaluate_actions.add_parser(
        "chat", help="the study chat on phantom studies: pass rates, repetition, intent "
        "answered, time to first token and whole answer; plain model vs chat adapter",
    )  # fmt: skip
    p.add_argument("--data", type=Path, default=None,
                   help="phantom folder (echo-agent phantom DIR --no-distractors); default: "
                   "generated into <home>/evaluate-chat/phantoms-seed<S>")  # fmt: skip
    p.add_argument("--studies", type=int, default=DEFAULT_STUDIES, help="studies to ask about")
    p.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS,
                   help="questions in all (whole conversations, studies in turn)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="phantoms and question choice")
    p.add_argument("--adapter", default="",
                   help="chat adapter folder (train llm --stage 2 --qa --out); default: the "
                   "shipped llm/weights/chat_adapter when it holds one; 'none': plain model "
                   "only")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="markdown table (default <home>/evaluate-chat/results.md; answers in "
                   "the .json beside it)")  # fmt: skip
    p.add_argument("--skip-plain", action="store_true",
                   help="evaluate the adapter only (e.g. to rerun it after training)")  # fmt: skip
    p.add_argument("--model-time-s", type=float, default=None,
                   help="seconds the model's one sentence may take (default: the shipped "
                   "budget, llm.chat.ADDITION_MAX_TIME_S); a larger value shows what the model "
                   "writes on a machine too loaded to write it in time, and its timings are "
                   "then not the shipped ones")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="print every answer (and why the raw "
                   "guard refused the model's sentence)")  # fmt: skip
    add_model_options(p)
    p.set_defaults(func=cmd_evaluate_chat)


def _home(config: Any) -> Path:
    return config.home_path if config is not None else Path("./var").resolve()


def _phantoms(args: argparse.Namespace, config: Any) -> Path:
    """``--data``, or phantoms generated once into the home folder (deterministic per seed)."""
    if args.data is not None:
        return Path(args.data)
    from inference.phantom import generate_phantoms

    folder = _home(config) / "evaluate-chat" / f"phantoms-seed{args.seed}"
    have = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    if have < args.studies:
        print(f"writing {args.studies} phantom studies to {folder}", file=sys.stderr)
        generate_phantoms(folder, n=args.studies, seed=args.seed, distractors=False)
    return folder


def _adapter(args: argparse.Namespace) -> Path | None:
    from llm.chat_adapter import CHAT_ADAPTER_DIR, has_chat_adapter

    if args.adapter.lower() == "none":
        return None
    if not args.adapter:
        return CHAT_ADAPTER_DIR if has_chat_adapter(CHAT_ADAPTER_DIR) else None
    path = Path(args.adapter)
    if not has_chat_adapter(path):
        raise ValueError(f"--adapter {path}: not a chat adapter folder (adapter.json + lora/)")
    return path


def cmd_evaluate_chat(args: argparse.Namespace, config: Any) -> int:
    from echo_agent.commands.llm import _open_model
    from llm.chat import ADDITION_MAX_TIME_S
    from llm.chat_adapter import load_chat_adapter
    from llm.chat_service import language_model_backend
    from llm.evaluate_chat import (
        TimedModel,
        load_phantom_studies,
        run_evaluation,
        summarize,
        write_results,
    )
    from llm.evaluate_chat_checks import knowledge_sentences

    if args.studies < 1 or args.questions < 1:
        raise ValueError("--studies and --questions must be at least 1")
    if args.model_time_s is not None and args.model_time_s <= 0:
        raise ValueError("--model-time-s must be positive")
    studies = load_phantom_studies(_phantoms(args, config), args.studies)
    adapter = _adapter(args)
    plain = _open_model(args, config)
    configs = {} if args.skip_plain else {f"plain {plain.name}": plain}
    if adapter is not None:
        configs[f"stage-2 chat adapter ({adapter.name})"] = load_chat_adapter(plain, adapter)
    if not configs:
        raise ValueError("--skip-plain needs an adapter (--adapter DIR, or the shipped one)")
    knowledge = knowledge_sentences()
    progress = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
    summaries, results = {}, {}
    for label, model in configs.items():
        started = time.perf_counter()
        timed = TimedModel(model)
        backend = language_model_backend(timed, addition_time_s=args.model_time_s)
        rows = run_evaluation(backend, studies, args.questions, args.seed, knowledge,
                              progress=progress, timed=timed)  # fmt: skip
        summaries[label] = {**summarize(rows), "wall_s": round(time.perf_counter() - started, 1),
                            "model_time_s": args.model_time_s or ADDITION_MAX_TIME_S,
                            "load_average": _load_average()}  # fmt: skip
        results[label] = rows
    out = args.out or _home(config) / "evaluate-chat" / "results.md"
    write_results(out, summaries, results)
    from llm.evaluate_chat import markdown_table

    print(f"studies: {len(studies)} phantoms (measurements: the phantoms' truth); "
          f"seed {args.seed}; threads {args.threads}; load average at the end "
          f"{_load_average()}")  # fmt: skip
    if args.model_time_s is not None:
        print(f"the model's sentence had {args.model_time_s:g} s (shipped: "
              f"{ADDITION_MAX_TIME_S:g} s): the timings are not the shipped ones")  # fmt: skip
    print(markdown_table(summaries))
    print(f"written: {out} and {out.with_suffix('.json')}")
    return 0 if all(s["guarded_pass_rate"] == 1.0 for s in summaries.values()) else 1


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages, since the timings depend on them ("" unknown)."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return ""


def cmd_train_chat(args: argparse.Namespace, config: Any) -> int:
    """Stage 2 on the generated question-answer set: a text-only LoRA of the chat model."""
    from echo_agent.commands.llm import _open_model
    from llm.chat_adapter_training import train_chat_adapter
    from llm.qa_dataset import generate_pairs, read_qa_dataset
    from llm.training import FitOptions

    if args.stage != 2:
        raise ValueError("--qa trains the stage-2 chat adapter: use --stage 2")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data is not None and args.data.is_file():
        pairs, source = read_qa_dataset(args.data), str(args.data)
    else:
        started = time.perf_counter()
        pairs = generate_pairs(args.qa_pairs, args.seed)
        source = f"generated: {args.qa_pairs} pairs, seed {args.seed}"
        print(f"{source} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    base = _open_model(args, config)
    fit = FitOptions(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                     grad_accum=args.grad_accum, lr=args.lr, seed=args.seed)  # fmt: skip
    command = ["echo-agent", *sys.argv[1:]]
    started = time.perf_counter()
    losses = train_chat_adapter(pairs, base, args.out, fit, {"command": command,
                                "dataset": source, "threads": args.threads})  # fmt: skip
    seconds = time.perf_counter() - started
    record = {"command": command, "dataset": source, "pairs": len(pairs), "losses": losses,
              "train_s": round(seconds, 1)}  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.out} chat adapter: {len(pairs)} pairs, steps={len(losses)} loss "
          f"{losses[0]:.4f} -> {losses[-1]:.4f} in {seconds:.0f} s")  # fmt: skip
    return 0
