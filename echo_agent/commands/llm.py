"""``echo-agent train llm`` and ``echo-agent evaluate llm``: the language model's training
(EchoGPT stages 1 and 2) and its grounding evaluation on phantom studies.

Both are wired in by ``echo_agent.cli`` through the ``train`` and ``evaluate`` groups:
``add_llm_train_parser(train_actions)`` and ``add_llm_evaluate_parser(evaluate_actions)`` take
the subparsers object of their group. torch and transformers load only when a command runs.
The evaluation itself is in ``echo_agent.commands.llm_evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm.backend import (
        HFTextModel,
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="",
        help="local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--model-cache",
        default="",
        help="where the embedded model is converted to (default: <home>/models/...)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (ignored on CUDA)")


def add_llm_train_parser(train_actions: Any) -> argparse.ArgumentParser:
    """``train llm --stage 1|2``; ``train_actions`` is the ``train`` group's subparsers."""
    p = train_actions.add_parser(
        "llm", help="train the video-text model's LoRA adapters and projector (EchoGPT part 3)"
    )
    p.add_argument("--stage", type=int, choices=(1, 2), required=True,
                   help="1: video-report pairs, 2: question answering")  # fmt: skip
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a dataset JSON (llm/dataset.py), a phantom folder (NAME.dcm + "
        "NAME.json) or an EchoNet-Dynamic folder (FileList.csv + Videos/); with --qa an "
        "optional question-answer set JSON (llm/qa_dataset.py)",
    )
    p.add_argument("--qa", action="store_true",
                   help="stage 2 for the study chat: a text-only LoRA of the language model on "
                   "the generated question-answer set (llm/qa_dataset.py)")  # fmt: skip
    p.add_argument("--qa-pairs", type=int, default=3000,
                   help="with --qa: question-answer pairs to generate")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="adapter and projector folder")
    p.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="continue from these adapters (stage 2 from stage 1's --out)",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate (cosine)")
    p.add_argument("--max-frames", type=int, default=45, help="frames sampled per loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="adapters and projector saved in this dtype (float16: half the size)",
    )
    _add_model_options(p)
    p.set_defaults(func=cmd_train_llm)
    return p


def add_llm_evaluate_parser(evaluate_actions: Any) -> argparse.ArgumentParser:
    """``evaluate llm``; ``evaluate_actions`` is the ``evaluate`` group's subparsers."""
    p = evaluate_actions.add_parser(
        "llm", help="grounding pass rates, time to first token, tokens/s on phantom studies"
    )
    p.add_argument("--data", type=Path, required=True,
                   help="phantom folder (echo-agent phantom DIR): the truth JSON gives the "
                   "measurements, the DICOM loop the video-text model's frames")  # fmt: skip
    p.add_argument("--n", type=int, default=20, help="studies to evaluate")
    p.add_argument(
        "--adapter",
        default="",
        help="video-text adapter folder (train llm --out) that drafts and answers from the "
        "loop's frames and the measurements; default: the shipped demo adapter with the "
        "embedded model, none with --model; 'none': the plain text model",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-time-s", type=float, default=60.0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    _add_model_options(p)
    from echo_agent.commands.llm_evaluate import cmd_evaluate_llm

    p.set_defaults(func=cmd_evaluate_llm)
    from echo_agent.commands.llm_chat import add_chat_evaluate_parser

    add_chat_evaluate_parser(evaluate_actions, _add_model_options)  # echo-agent evaluate chat
    return p


def _home(config: Any) -> Path:
    return config.home_path if config is not None else Path("./var").resolve()


def _open_model(args: argparse.Namespace, config: Any) -> HFTextModel:
    import torch

    from llm.backend import LlmSettings, open_text_model

    if args.threads < 1:
        raise ValueError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    settings = LlmSettings(model_path=args.model, cache_dir=args.model_cache, device=args.device)
    return open_text_model(settings, _home(config), lambda line: print(line, file=sys.stderr))


def _dataset_file(data: Path, stage: int, out_dir: Path) -> Path:
    """A dataset JSON as given, or one generated from a phantom or EchoNet folder."""
    from llm.dataset import samples_from_echonet, samples_from_phantoms, write_dataset

    if data.is_file():
        return data
    if not data.is_dir():
        raise ValueError(f"{data}: neither a dataset JSON nor a folder")
    if (data / "FileList.csv").is_file():
        samples = samples_from_echonet(data / "FileList.csv", stage)
    else:
        samples = samples_from_phantoms(data, stage)
    if not samples:
        raise ValueError(f"{data}: no A4C loop with measurements to build stage {stage} data from")
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_dataset(samples, out_dir / f"dataset_stage{stage}.json", stage)


def cmd_train_llm(args: argparse.Namespace, config: Any) -> int:
    if getattr(args, "qa", False):
        from echo_agent.commands.llm_chat import cmd_train_chat

        return cmd_train_chat(args, config)
    if args.data is None:
        raise ValueError("--data is required (or --qa for the stage-2 chat adapter)")
    from llm.training import FitOptions, LlmTrainOptions, train_video_text
    from llm.video_text import encoder_from_segmenter

    loaded = configured_preset(config)
    base = _open_model(args, config)  # after the encoder: its weights fail faster
    encoder = encoder_from_segmenter(loaded.segmenter.to(base.device))
    dataset = _dataset_file(args.data, args.stage, args.out)
    fit = FitOptions(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
    )
    options = LlmTrainOptions(
        dataset, args.out, fit, args.init_adapter, args.max_frames, args.save_dtype
    )
    result = train_video_text(
        options, base, encoder, loaded.mean, loaded.std, encoder_name=loaded.description
    )
    command = {"command": ["echo-agent", *sys.argv[1:]], "dataset": str(dataset),
               "stage": result.stage, "losses": list(result.losses)}  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(command, indent=1) + "\n")
    first, last = result.losses[0], result.losses[-1]
    print(f"{args.out} stage={result.stage} samples={result.n_samples} "
          f"steps={len(result.losses)} loss {first:.4f} -> {last:.4f}")  # fmt: skip
    return 0


def configured_preset(config: Any) -> Any:
    """The configured model preset (``[models]``; the demo preset without a configuration):
    its segmentation backbone is the video-text model's frame encoder."""
    from inference.presets import load_preset

    m = config.models if config is not None else None
    return load_preset(
        m.preset if m else "demo",
        seg_weights=(m.seg_weights or None) if m else None,
        mean=(m.mean or None) if m else None,
        std=(m.std or None) if m else None,
    )
