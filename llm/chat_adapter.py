"""The text-only chat adapter (EchoGPT stage 2 for the study chat): a LoRA on the embedded
model's query and value projections, trained on the generated question-answer set
(``llm.qa_dataset``) and merged into a copy of the base model for answering.

Why text-only: the chat answers from the fact sheet and knowledge entries in its prompt; the
video-text adapter (``llm.video_text``) pays for frame features the chat does not use. Why
merged: a merged model is an ordinary ``HFTextModel``, so chat, guard and timings treat it
exactly as the plain model, and decoding costs no more than the plain model's. Why small: r=16
on the top ten layers keeps the shipped files well under 1 MB (float16), against 8.6 MB for
the video-text adapter at r=64 on every layer.

Training reuses ``llm.training.fit``: ``ChatLoraModel`` takes the same batch arguments as the
video-text model (frame features are ignored), and its ``instructions`` are already rendered
prompts (chat template applied, generation prompt appended), so the model learns to continue
exactly the prompt the chat gives it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm.backend import HFTextModel
from llm.hf_imports import peft_module

CHAT_ADAPTER_DIR = Path(__file__).resolve().parent / "weights" / "chat_adapter"
LORA_DIR = "lora"
INFO_FILE = "adapter.json"
CHAT_LORA_R = 16
CHAT_LORA_ALPHA = 32
CHAT_LORA_DROPOUT = 0.05
CHAT_LORA_TARGETS = ("q_proj", "v_proj")
# adapters on the top layers only: the backward pass then stops there, which roughly halves a
# training step on two CPU cores; one plain-words sentence needs no deeper change
CHAT_LORA_TOP_LAYERS = 10
IGNORE_INDEX = -100
MAX_PROMPT_TOKENS = 1536


@dataclass(frozen=True)
class ChatAdapterInfo:
    """What ``adapter.json`` records: the base model it belongs to and how it was trained."""

    base_model: str
    rank: int
    alpha: int
    training: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def has_chat_adapter(adapter_dir: Path = CHAT_ADAPTER_DIR) -> bool:
    """Whether ``adapter_dir`` holds a trained adapter (the shipped folder may hold only its
    README when no adapter beat the plain model)."""
    d = Path(adapter_dir)
    return (d / INFO_FILE).is_file() and (d / LORA_DIR / "adapter_config.json").is_file()


def read_info(adapter_dir: Path) -> ChatAdapterInfo:
    path = Path(adapter_dir) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{adapter_dir}: no {INFO_FILE} (not a chat adapter folder)")
    return ChatAdapterInfo(**json.loads(path.read_text()))


def adapted_modules(model: nn.Module, adapter_dir: Path) -> set[str]:
    """The names of ``model``'s modules the adapter changes (its target projections in its
    layers), from the adapter's own ``adapter_config.json``."""
    config = json.loads((Path(adapter_dir) / LORA_DIR / "adapter_config.json").read_text())
    targets = set(config["target_modules"])
    layers = config.get("layers_to_transform")
    return {
        name for name, _ in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets
        and (layers is None or any(f"layers.{i}." in name for i in layers))
    }  # fmt: skip


def _copy_sharing_unadapted(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """A deep copy of ``model`` whose weights are the original tensors except those of the
    adapted modules. Why: merging writes into those only, and a full copy held a second
    model beside the drafts' one (RSS 453 MB -> 1475 MB for SmolLM2-135M on CPU); the adapted
    projections of ten layers are about 18 MB in float32."""
    adapted = adapted_modules(model, adapter_dir)
    memo: dict[int, Any] = {}
    for name, module in model.named_modules():
        if name in adapted:
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            memo[id(t)] = t
    return copy.deepcopy(model, memo)


def load_chat_adapter(base: HFTextModel, adapter_dir: Path = CHAT_ADAPTER_DIR) -> HFTextModel:
    """A copy of ``base`` with the adapter merged in (``base`` itself is left untouched, so
    the plain and adapted models can be compared in one process, and the drafts keep it).
    Only the adapted projections are copied; every other weight is shared with ``base``."""
    peft = peft_module()

    adapter_dir = Path(adapter_dir)
    info = read_info(adapter_dir)
    if info.base_model != base.name:
        raise ValueError(
            f"{adapter_dir}: chat adapter for {info.base_model!r}, base model is {base.name!r}"
        )
    model = _copy_sharing_unadapted(base.model, adapter_dir)
    wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir / LORA_DIR))
    dtype = next(model.parameters()).dtype
    for name, p in wrapped.named_parameters():  # float16 files: LoRA in the base's dtype
        if "lora_" in name and p.dtype != dtype:
            p.data = p.data.to(dtype)
    merged = wrapped.merge_and_unload().eval()
    return HFTextModel(merged, base.tokenizer, base.device, f"{base.name} + chat adapter")


class ChatLoraModel(nn.Module):
    """The base model with fresh LoRA adapters (B = 0: it starts as the base model); called as
    ``llm.training.fit`` calls the video-text model."""

    def __init__(self, base: HFTextModel, seed: int = 0) -> None:
        super().__init__()
        peft = peft_module()

        torch.manual_seed(seed)
        for p in base.model.parameters():
            p.requires_grad_(False)
        n_layers = int(base.model.config.num_hidden_layers)
        top = list(range(max(0, n_layers - CHAT_LORA_TOP_LAYERS), n_layers))
        config = peft.LoraConfig(
            r=CHAT_LORA_R, lora_alpha=CHAT_LORA_ALPHA, lora_dropout=CHAT_LORA_DROPOUT,
            target_modules=list(CHAT_LORA_TARGETS), layers_to_transform=top, bias="none",
            task_type="CAUSAL_LM",
        )  # fmt: skip
        self.lm = peft.get_peft_model(copy.deepcopy(base.model), config)
        self.tokenizer = base.tokenizer
        self.base_name = base.name
        self.device_name = base.device

    def sequence(self, prompt: str, answer: str, max_answer_tokens: int) -> tuple[list[int], int]:
        """(token ids, prompt length): the rendered prompt, then the answer and its end token."""
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        end = tok.convert_tokens_to_ids("<|im_end|>")
        end = end if isinstance(end, int) and end >= 0 else tok.eos_token_id
        return [*prompt_ids, *answer_ids, end], len(prompt_ids)

    def forward(
        self,
        features: Sequence[Any],
        instructions: Sequence[str],
        answers: Sequence[str],
        max_answer_tokens: int = 256,
    ) -> torch.Tensor:
        """Mean next-token loss over the answers of one batch (right-padded; prompts are never
        targets). ``features`` is ignored: the chat adapter reads text only."""
        del features
        seqs = [self.sequence(p, a, max_answer_tokens)
                for p, a in zip(instructions, answers, strict=True)]  # fmt: skip
        length = max(len(ids) for ids, _ in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, (seq, prompt_len) in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, prompt_len : len(seq)] = torch.tensor(seq[prompt_len:])
            mask[row, : len(seq)] = 1
        device = self.device_name
        out = self.lm(input_ids=ids.to(device), attention_mask=mask.to(device),
                      labels=labels.to(device))  # fmt: skip
        return out.loss

    def save(self, out_dir: Path, training: dict[str, Any], dtype: str = "float16") -> Path:
        """LoRA weights only (peft layout), in ``dtype``, and ``adapter.json``."""
        from safetensors.torch import load_file, save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(out_dir / LORA_DIR))
        (out_dir / LORA_DIR / "README.md").unlink(missing_ok=True)  # peft's blank model card
        weights = out_dir / LORA_DIR / "adapter_model.safetensors"
        if dtype == "float16" and weights.is_file():
            halves = {k: v.half().contiguous() for k, v in load_file(str(weights)).items()}
            save_file(halves, str(weights), metadata={"format": "pt"})
        info = ChatAdapterInfo(self.base_name, CHAT_LORA_R, CHAT_LORA_ALPHA, training)
        (out_dir / INFO_FILE).write_text(json.dumps(info.to_json(), indent=1) + "\n")
        return out_dir
