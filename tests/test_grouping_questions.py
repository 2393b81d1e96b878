"""Suggested questions and their answers through `facefleet people suggest|answer` and the
grouping queue's `answer` message, on real servers (moto, nx-27017); later grouping by a fresh
worker (state rebuilt from MongoDB) and consolidation must respect every answer."""

from __future__ import annotations

import json

import pytest

from facefleet.common.messages import AnswerRequest
from facefleet.tools.cli import build_parser
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.grouping.edits import are_apart
from facefleet.worker.grouping.state import ClusterParams
from facefleet.worker.grouping.store import load_session
from tests.grouping_service_helpers import (
    Gallery,
    Identities,
    Setup,
    by_identity,
    make_setup,
    people,
    store_for,
)
from tests.sqs_helpers import counts, send


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch)


def run(capsys, *argv: str) -> tuple[int, str]:
    args = build_parser(("facefleet.tools.people_cli",)).parse_args(["people", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def split_library(setup: Setup) -> tuple[Gallery, int, int]:
    """Identity 0 split in two people by the user's own moves (the rest grouped normally):
    returns the gallery, the identity's automatic person and the split-off one."""
    g = Gallery(setup.env, "alice", setup.bucket, Identities(3))
    setup.request("alice", g.photos("a", 4, range(3)))
    setup.consume(setup.service())
    owner = {i: next(iter(p)) for i, p in by_identity(g.truth, people(setup.env, "alice")).items()}
    zero = sorted(f for f, i in g.truth.items() if i == 0)
    corrections = Corrections(store_for(setup.env), s3=setup.service().s3, bucket=setup.bucket)
    split = corrections.move("alice", zero[0], None)
    corrections.move("alice", zero[1], split)
    return g, owner[0], split


def test_suggest_asks_about_the_split_and_answers_bind_later_grouping(setup, capsys) -> None:
    g, person, split = split_library(setup)
    bob = Gallery(setup.env, "bob", setup.bucket, Identities(2, seed=3))
    setup.request("bob", bob.photos("b", 3, range(2)))
    setup.consume(setup.service())

    code, out = run(capsys, "suggest", "alice", "--json")
    assert code == 0, out
    questions = json.loads(out)
    first = questions[0]
    assert first["kind"] == "people" and {first["person"], first["other"]} == {person, split}
    # Only alice's own people and faces are ever named.
    alice_faces = set(g.truth)
    alice_people = set(people(setup.env, "alice"))
    for q in questions:
        assert q["person"] in alice_people and (q["other"] is None or q["other"] in alice_people)
        assert q["face_id"] is None or q["face_id"] in alice_faces

    code, out = run(capsys, "answer", "alice", first["id"], "different")
    assert code == 0, out
    # The cannot-link is stored with the user and rebuilt with the state.
    store = store_for(setup.env)
    assert store.user_doc("alice")["apart"] == [sorted([person, split])]
    rebuilt = load_session(store, "alice", ClusterParams()).state
    assert are_apart(rebuilt, person, split)
    code, out = run(capsys, "suggest", "alice", "--json")
    assert first["id"] not in {q["id"] for q in json.loads(out)}  # never asked again
    code, out = run(capsys, "answer", "alice", first["id"], "same")
    assert code == 2 and "already answered" in out  # a clear error line, nothing changed

    # New photos of identity 0 through a fresh worker, then a consolidation: the two people
    # the user said differ stay two, and neither takes the other's faces.
    before = people(setup.env, "alice")
    setup.request("alice", g.photos("c", 3, [0]))
    setup.consume(setup.service())
    Corrections(store_for(setup.env), s3=setup.service().s3, bucket=setup.bucket).consolidate(
        "alice"
    )
    after = people(setup.env, "alice")
    assert person in after and split in after
    assert before[split]["members"] <= after[split]["members"]
    assert before[person]["members"] <= after[person]["members"]
    assert not after[person]["members"] & after[split]["members"]


def test_answer_message_merges_and_unknown_answers_are_dropped(setup, capsys) -> None:
    _, person, split = split_library(setup)
    questions = Corrections(
        store_for(setup.env), s3=setup.service().s3, bucket=setup.bucket
    ).suggest("alice")
    first = questions[0]
    assert {first.person, first.other} == {person, split}
    send(setup.env, setup.queue.url, AnswerRequest("alice", first.question_id, "same").to_body())
    send(setup.env, setup.queue.url, AnswerRequest("alice", "q0000000000", "same").to_body())
    setup.consume(setup.service())

    stored = people(setup.env, "alice")
    assert len([p for p in (person, split) if p in stored]) == 1  # one person now
    assert counts(setup.env, setup.queue.url) == (0, 0)  # the unknown answer dropped, logged
    log = [c["op"] for c in store_for(setup.env).corrections.find({"user_id": "alice"})]
    assert log.count("answer") == 1


def test_suggest_for_an_unknown_user_is_an_error_line(setup, capsys) -> None:
    code, out = run(capsys, "suggest", "nobody")
    assert code == 2 and out.startswith("error:") and "nobody" in out


def test_erasure_removes_the_users_questions(setup, capsys) -> None:
    from facefleet.worker.privacy.erasure import erase_user

    split_library(setup)
    store = store_for(setup.env)
    assert Corrections(store, s3=setup.service().s3, bucket=setup.bucket).suggest("alice")
    receipt = erase_user(store, setup.service().s3, setup.bucket, "alice", owner="test")
    assert receipt.counts["huemn_questions"] == 1
    assert store.assignments.database["questions"].find_one({"_id": "alice"}) is None
