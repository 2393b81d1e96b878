"""Answers to the questions of `suggest`, as constraints on a user's library, and where the
questions live.

    update = apply_answer(state, question, "same" | "different" | "skip")   # pure

- people, "same": the smaller person merges into the larger (`merge_people`: both pinned);
  "different": a cannot-link between the two (`separate_people`).
- face or member, "same": the face is put in (or confirmed in) the person (`move_face`: pinned);
  "different": it leaves the person, if in it, and never joins it (`reject_face`).
- "skip": nothing changes; like every answer, the question is never asked again.

HUEMN `questions` holds one document per user: `open` (the last suggestions, with the revision
of the user's state they were computed from: a new revision means the library changed and they
are recomputed) and `answered` (question key -> answer). Answers are applied under the user's
lease (`Corrections.answer`, or the grouping worker for an `answer` message).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pymongo.collection import Collection
from pymongo.database import Database

from facefleet.common.documents import encode_time, now
from facefleet.common.repository import LeaseHeld
from facefleet.worker.grouping import edits
from facefleet.worker.grouping.state import ClusterUpdate, UserClusterState
from facefleet.worker.grouping.suggest import FACE, MEMBER, PEOPLE, Question
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome, classify

if TYPE_CHECKING:
    from facefleet.common.messages import AnswerRequest
    from facefleet.worker.grouping.service import GroupingService

log = logging.getLogger(__name__)

Answer = Literal["same", "different", "skip"]
ANSWERS: tuple[Answer, ...] = ("same", "different", "skip")


class StaleQuestion(ValueError):
    """The question no longer applies to the library (its people or face changed)."""


def apply_answer(state: UserClusterState, question: Question, answer: str) -> ClusterUpdate:
    """The answer as a change of the library and a constraint on every later decision."""
    if answer not in ANSWERS:
        raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    person = _live(state, question.person, question)
    if answer == "skip":
        return ClusterUpdate()
    if question.kind == PEOPLE:
        other = _live(state, int(question.other or 0), question)
        if person == other:
            raise StaleQuestion(f"question {question.question_id}: the two are already one person")
        if answer == "different":
            return edits.separate_people(state, person, other)
        keep, absorb = sorted((person, other), key=lambda p: (-len(state.people[p].members), p))
        return edits.merge_people(state, keep, absorb)
    if question.kind not in (FACE, MEMBER) or question.face_id is None:
        raise ValueError(f"question {question.question_id}: no face to answer about")
    if question.face_id not in state.ordinal_of:
        raise StaleQuestion(
            f"question {question.question_id}: the face is no longer in the library"
        )
    if answer == "same":
        return edits.move_face(state, question.face_id, person)
    return edits.reject_face(state, question.face_id, person)


def _live(state: UserClusterState, person_id: int, question: Question) -> int:
    person = state.resolve(person_id)
    if person not in state.people:
        raise StaleQuestion(f"question {question.question_id}: person {person_id} is gone")
    return person


# -- where the questions live ---------------------------------------------------------------------


@dataclass
class Book:
    """One user's stored questions."""

    revision: str | None
    open: list[Question]
    answered: dict[str, str]

    def find(self, question_id: str) -> Question | None:
        return next((q for q in self.open if q.question_id == question_id), None)


QUESTIONS = "questions"


class QuestionBook:
    """HUEMN `questions`: one document per user (never anything of another user's)."""

    def __init__(self, collection: Collection[Any]) -> None:
        self.collection = collection

    @classmethod
    def of(cls, huemn: Database[Any]) -> QuestionBook:
        return cls(huemn[QUESTIONS])

    def erase(self, user_id: str) -> int:
        """Erasure: the user's questions name their faces and people."""
        return self.collection.delete_many({"_id": user_id}).deleted_count

    def load(self, user_id: str) -> Book:
        doc = self.collection.find_one({"_id": user_id}) or {}
        return Book(
            doc.get("revision"),
            [Question.from_doc(q) for q in doc.get("open", [])],
            {str(a["key"]): str(a["answer"]) for a in doc.get("answered", [])},
        )

    def save_open(self, user_id: str, revision: str | None, questions: Sequence[Question]) -> None:
        self.collection.update_one(
            {"_id": user_id},
            {
                "$set": {
                    "revision": revision,
                    "open": [q.to_doc() for q in questions],
                    "updated_at": encode_time(now()),
                }
            },
            upsert=True,
        )

    def record(self, user_id: str, question: Question, answer: str) -> None:
        """The answer is kept (its question never returns) and the question leaves `open`."""
        book = self.load(user_id)
        answered = [{"key": k, "answer": a} for k, a in book.answered.items()]
        if question.key not in book.answered:
            answered.append({"key": question.key, "answer": answer, "id": question.question_id})
        self.collection.update_one(
            {"_id": user_id},
            {
                "$set": {
                    "open": [q.to_doc() for q in book.open if q.key != question.key],
                    "answered": answered,
                    "updated_at": encode_time(now()),
                }
            },
            upsert=True,
        )


# -- the grouping worker's hook ------------------------------------------------------------------


def handle_answers(
    service: GroupingService,
    items: Sequence[tuple[ReceivedMessage, AnswerRequest]],
    outage: bool,
) -> dict[str, Outcome]:
    """`answer` messages of a batch (the gallery product's "same or different?"), each under the
    user's lease. An answer to a question that is not open (answered already, or stale) is
    logged and dropped: there is nothing left to apply."""
    from facefleet.worker.grouping.corrections import Corrections

    outcomes: dict[str, Outcome] = {}
    for message, request in items:
        if outage:
            outcomes[message.message_id] = Outcome.RETRY
            continue
        service.sessions.pop(request.user_id, None)  # the answer writes the state
        corrections = Corrections(
            service.store,
            s3=service.s3,
            bucket=service.bucket,
            params=service.params,
            lease_ttl=service.lease_ttl,
            lease_wait_seconds=0.0,
        )
        try:
            corrections.answer(request.user_id, request.question_id, request.answer)
            outcomes[message.message_id] = Outcome.DONE
        except LeaseHeld:
            outcomes[message.message_id] = Outcome.RETRY
        except (KeyError, ValueError) as error:
            log.warning(
                "answer not applied",
                extra={
                    "user_id": request.user_id,
                    "question_id": request.question_id,
                    "error": str(error),
                },
            )
            outcomes[message.message_id] = Outcome.DONE
        except Exception as error:
            outcomes[message.message_id] = classify(error)
            if outcomes[message.message_id] is Outcome.RETRY:
                outage = True
                continue
            log.exception("answer failed", extra={"user_id": request.user_id})
        finally:
            service.sessions.pop(request.user_id, None)
    return outcomes
