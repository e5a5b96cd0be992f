"""The chat panel's API: history per study and per user, and answers streamed as Server-Sent
Events over a POST (``fetch`` reads the stream; ``EventSource`` cannot send a body or the CSRF
header).

The question is stored before the answer starts and the answer once it is complete (or cut
off, marked so), so the history never holds half a turn without saying so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request, stream_with_context
from sqlalchemy import select

from llm.chat import HISTORY_TURNS, ChatTurn
from llm.chat_service import ChatBackend, StoredStudy
from pacs_agent.db.models import ChatMessage
from web import audit
from web.db import db, session_factory
from web.signoff import report_text
from web.studies import get_study, latest_analysis, measurement_table

bp = Blueprint("chat", __name__, url_prefix="/api")
log = logging.getLogger("echo_agent.web.chat")

MAX_QUESTION_CHARS = 2000


def _history(study_id: int, user_id: int) -> list[ChatMessage]:
    return list(
        db().scalars(
            select(ChatMessage)
            .where(ChatMessage.study_fk == study_id, ChatMessage.user_fk == user_id)
            .order_by(ChatMessage.created_at, ChatMessage.id)
        )
    )


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "grounding": m.grounding,
        "created_at": m.created_at.isoformat(),
    }


@bp.get("/studies/<int:study_id>/chat")
def history(study_id: int) -> Any:
    if get_study(db(), study_id) is None:
        abort(404)
    return jsonify(messages=[_message_dict(m) for m in _history(study_id, g.user.id)])


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@bp.post("/studies/<int:study_id>/chat")
def ask(study_id: int) -> Any:
    session = db()
    study = get_study(session, study_id)
    if study is None:
        abort(404)
    body = request.get_json(silent=True) or {}
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str) or not question.strip():
        return jsonify(error="question must be non-empty text"), 400
    question = question.strip()[:MAX_QUESTION_CHARS]
    analysis = latest_analysis(session, study.id)
    versions = list(study.report_versions)
    latest = versions[-1] if versions else None
    context = StoredStudy(
        study_id=study.id,
        measurements=dict(analysis.measurements) if analysis else None,
        table=measurement_table(analysis) if analysis else [],
        report_text=report_text(latest.structured_text, latest.narrative_text) if latest else "",
        demo_models=bool(analysis and analysis.demo_models),
        patient_sex=study.patient.sex,
        # the analysed loop's checked height and weight (NULL: the volumes are not indexed)
        height_cm=analysis.patient_height_cm if analysis else None,
        weight_kg=analysis.patient_weight_kg if analysis else None,
    )
    past = [ChatTurn(m.role, m.content) for m in _history(study.id, g.user.id)][-HISTORY_TURNS:]
    user_id = g.user.id
    asked = ChatMessage(study_fk=study.id, user_fk=user_id, role="user", content=question)
    session.add(asked)
    session.commit()
    audit.record(
        "ask",
        study_id=study.id,
        target_type="chat_message",
        target_id=asked.id,
        detail={"question": question[:500]},
    )
    backend: ChatBackend = current_app.config["ECHO_AGENT_CHAT_BACKEND"]
    backend_name = getattr(backend, "__name__", type(backend).__name__)
    factory = session_factory()

    def generate() -> Iterator[str]:
        parts: list[str] = []
        grounding: dict[str, Any] = {}
        final_text: str | None = None
        complete = False
        try:
            yield _sse("start", {"question_id": asked.id})
            for piece in backend(context, past, question):
                if isinstance(piece, str):
                    parts.append(piece)
                    yield _sse("chunk", {"text": piece})
                    continue
                answer = getattr(piece, "answer", None)
                if getattr(piece, "replace", False):
                    parts = [piece.text]
                    yield _sse("replace", {"text": piece.text})
                elif piece.text:
                    parts.append(piece.text)
                    yield _sse("chunk", {"text": piece.text})
                if answer is not None:
                    final_text = answer.text
                    grounding = dict(answer.grounding_json())
            complete = True
        except Exception as exc:  # a backend failure ends the answer visibly, not silently
            log.exception("chat backend failed")
            yield _sse("error", {"error": f"the answer stopped: {type(exc).__name__}"})
        finally:
            text = final_text if final_text is not None else "".join(parts)
            with factory.begin() as s:
                stored = ChatMessage(
                    study_fk=study_id,
                    user_fk=user_id,
                    role="assistant",
                    content=text + ("" if complete else "\n[answer interrupted]"),
                    grounding={**grounding, "backend": backend_name, "complete": complete},
                )
                s.add(stored)
                s.flush()
                answer_id = stored.id
        yield _sse("done", {"answer_id": answer_id, "complete": complete, **grounding})

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"
    return response
