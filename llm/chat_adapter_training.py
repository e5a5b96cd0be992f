"""Training the text-only chat adapter (``llm.chat_adapter``) on the question-answer set
(``llm.qa_dataset``): ``echo-agent train llm --stage 2 --qa``.

Each pair whose model part passed the guard becomes one example (for a run with a step limit,
as many pairs as it sees, balanced over the standings they restate: ``balanced_pairs``): the
prompt the chat gave the model (recorded with the pair, rendered with the model's own chat
template exactly as ``HFTextModel.prompt_ids`` renders it) and the model's part as the target.
The optimiser, schedule and loop are ``llm.training.fit``'s (AdamW, cosine with warm-up,
gradient accumulation, clipping), shared with the video-text stages.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llm.backend import HFTextModel
from llm.chat_adapter import ChatLoraModel
from llm.qa_dataset import QaPair, first_plain_sentence
from llm.training import FeatureSample, FitOptions, fit

_NO_FEATURES = torch.empty(0)


def rendered_prompt(tokenizer: Any, messages: Sequence[Sequence[str]]) -> str:
    """The prompt as text, ending where the model's answer starts (after the assistant's
    opening words when the last message is the assistant's)."""
    opening = bool(messages) and messages[-1][0] == "assistant"
    return str(tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages], tokenize=False,
        add_generation_prompt=not opening, continue_final_message=opening,
    ))  # fmt: skip


def standing_of(pair: QaPair) -> str:
    """What the pair's model part restates: the first plain sentence of its prompt."""
    from llm.backend import Message

    return first_plain_sentence([Message(r, c) for r, c in pair.meta.get("prompt") or []])


def balanced_pairs(pairs: Sequence[QaPair], n: int, seed: int) -> list[QaPair]:
    """At most ``n`` pairs with a model part, taken in turn from each standing they restate
    (``standing_of``), shuffled within each. Why: a run of a few dozen steps sees a few hundred
    pairs, and drawn at random most restate the LVEF grade (it comes first for most
    questions); the first such adapter, asked about the LV size, restated a pumping strength
    instead ("pumps more strongly than usual" for an enlarged LV with a reduced LVEF)."""
    rng = random.Random(seed)
    groups: dict[str, list[QaPair]] = {}
    for p in pairs:
        if p.meta.get("addition") and p.meta.get("prompt"):
            groups.setdefault(standing_of(p), []).append(p)
    queues = [rng.sample(g, len(g)) for _, g in sorted(groups.items())]
    out: list[QaPair] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def training_examples(pairs: Sequence[QaPair], tokenizer: Any) -> list[FeatureSample]:
    """One example per pair with a model part (out-of-scope pairs and pairs where no target
    passed the guard have none)."""
    out = []
    for p in pairs:
        addition, prompt = p.meta.get("addition", ""), p.meta.get("prompt")
        if addition and prompt:
            out.append(FeatureSample(p.id, _NO_FEATURES, rendered_prompt(tokenizer, prompt),
                                     addition))  # fmt: skip
    return out


def train_chat_adapter(
    pairs: Sequence[QaPair],
    base: HFTextModel,
    out_dir: Path,
    options: FitOptions,
    training: dict[str, Any],
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[float]:
    """Trains a fresh adapter on ``pairs`` and saves it (float16) into ``out_dir`` with
    ``adapter.json`` (``training`` recorded there); returns the loss of every optimiser step.
    ``base`` is not modified."""
    if options.max_steps is not None:  # a short run: a balanced share of the pairs
        seen = options.max_steps * options.batch_size * options.grad_accum
        pairs = balanced_pairs(pairs, seen, options.seed)
    examples = training_examples(pairs, base.tokenizer)
    if not examples:
        raise ValueError("no pair has a model part to train on")
    random.Random(options.seed).shuffle(examples)
    progress(f"chat adapter: {len(examples)} examples from {len(pairs)} pairs")
    model = ChatLoraModel(base, options.seed)
    losses = fit(model, examples, options, progress)  # type: ignore[arg-type]
    model.save(Path(out_dir), {**training, "examples": len(examples), "steps": len(losses),
                               "first_loss": losses[0], "last_loss": losses[-1]})  # fmt: skip
    progress(f"saved the chat adapter to {out_dir}")
    return losses
