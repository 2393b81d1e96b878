"""User corrections, re-cluster and model change through `facefleet people`, on real servers;
later automatic grouping (by a fresh worker, state rebuilt from MongoDB) must respect them."""

from __future__ import annotations

import json
from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from facefleet.tools.cli import build_parser
from facefleet.worker.grouping.corrections import Corrections
from tests.grouping_service_helpers import (
    Gallery,
    Identities,
    Setup,
    by_identity,
    make_setup,
    people,
    store_for,
)


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch)


def grouped(setup: Setup, identities: int = 3, photos: int = 3) -> tuple[Gallery, dict[int, int]]:
    g = Gallery(setup.env, "alice", setup.bucket, Identities(identities))
    setup.request("alice", g.photos("a", photos, range(identities)))
    setup.consume(setup.service())
    found = by_identity(g.truth, people(setup.env, "alice"))
    assert all(len(p) == 1 for p in found.values())
    return g, {identity: next(iter(p)) for identity, p in found.items()}


def run(capsys, *argv: str) -> str:
    """`facefleet people ARGV`, with only this command registered: the other commands' imports
    (Prefect) would cost more than the whole test."""
    args = build_parser(("facefleet.tools.people_cli",)).parse_args(["people", *argv])
    code = args.func(args)
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def faces_of(g: Gallery, identity: int) -> list[str]:
    return sorted(f for f, i in g.truth.items() if i == identity)


def test_merge_move_reject_and_name_persist_and_bind_later_grouping(setup, capsys) -> None:
    g, owner = grouped(setup)
    moved = faces_of(g, 2)[0]
    rejected = faces_of(g, 0)[0]

    run(capsys, "merge", "alice", str(owner[0]), str(owner[1]))
    out = run(capsys, "move", "alice", moved, "new")
    pinned_person = int(out.split()[-1])
    run(capsys, "reject", "alice", rejected, str(owner[0]))
    run(capsys, "name", "alice", str(owner[0]), "Ann", "Lee")

    stored = people(setup.env, "alice")
    assert owner[1] not in stored  # merged away
    assert stored[owner[0]]["members"] == set(faces_of(g, 0) + faces_of(g, 1)) - {rejected}
    assert stored[pinned_person]["members"] == {moved}
    assert "Ann Lee" in run(capsys, "list", "alice")
    log = list(store_for(setup.env).corrections.find({"user_id": "alice"}))
    assert [c["op"] for c in log] == ["merge", "move", "reject", "name"]

    # New photos of everyone, grouped by a fresh worker that rebuilds the state from MongoDB.
    setup.request("alice", g.photos("b", 2, range(3)))
    setup.consume(setup.service())

    stored = people(setup.env, "alice")
    assert owner[1] not in stored  # the merged id stays retired
    assert set(faces_of(g, 1)) <= stored[owner[0]]["members"]  # identity 1 still joins Ann
    assert stored[owner[0]]["name"] == "Ann Lee"
    assert rejected not in stored[owner[0]]["members"]  # "not this person" holds
    assert moved in stored[pinned_person]["members"]  # the user's placement holds
    assert set(faces_of(g, 2)) - {moved} <= stored[owner[2]]["members"]


def test_recluster_compares_and_apply_keeps_ids_and_names(setup, capsys) -> None:
    _, owner = grouped(setup, identities=3, photos=4)
    run(capsys, "name", "alice", str(owner[2]), "Cy")
    before = people(setup.env, "alice")

    report = run(capsys, "recluster", "alice")
    assert "ari: 1.0" in report and "applied: False" in report

    run(capsys, "recluster", "alice", "--apply")
    after = people(setup.env, "alice")
    assert {p: (v["name"], v["members"]) for p, v in after.items()} == {
        p: (v["name"], v["members"]) for p, v in before.items()
    }


def _identity_crop(identity: int) -> bytes:
    """A crop whose pixels encode its identity, so a stand-in embedder can re-embed it."""
    image = np.full((112, 112, 3), 40 * identity + 20, dtype=np.uint8)
    return bytes(cv2.imencode(".png", image)[1])


def test_model_change_reembeds_and_carries_named_people(setup, capsys) -> None:
    g, owner = grouped(setup, identities=3, photos=3)
    run(capsys, "name", "alice", str(owner[1]), "Bea")
    s3 = setup.service().s3
    store = store_for(setup.env)
    for face in store.gallery.faces_of_user("alice", "m1"):
        s3.put_object(
            Bucket=setup.bucket, Key=face.crop_key, Body=_identity_crop(g.truth[face.doc_id])
        )
    new_space = Identities(3, seed=99)  # the new model: unrelated embedding space

    def embed(crops: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([new_space.sample(int(c.mean() - 20) // 40) for c in crops])

    corrections = Corrections(store, s3=s3, bucket=setup.bucket)
    report = corrections.migrate("alice", "m2", embed)

    assert report.faces_reembedded == 9 and report.named_carried == 1 and not report.named_lost
    stored = people(setup.env, "alice")
    assert stored[owner[1]]["name"] == "Bea"  # same person id, same name
    assert len(stored[owner[1]]["members"]) == 3
    assert {p.model_id for p in store.people.people_of_user("alice")} == {"m2"}
    assert store.assignments.count_documents({"user_id": "alice", "model_id": "m1"}) == 0

    # The detector now writes m2 faces: they join the migrated people.
    g2 = Gallery(setup.env, "alice", setup.bucket, new_space, model_id="m2")
    setup.request("alice", g2.photos("c", 1, range(3)))
    setup.consume(setup.service())
    stored = people(setup.env, "alice")
    assert len(stored[owner[1]]["members"]) == 4 and len(stored) == 3


def test_people_list_needs_no_crop_bucket(setup, capsys, monkeypatch) -> None:
    """A read-only listing after `source stack.env` once failed with "missing required
    settings: FACE_GROUP_BUCKET_NAME"; commands that rewrite covers still ask for it."""
    grouped(setup, identities=2, photos=2)
    monkeypatch.delenv("FACE_GROUP_BUCKET_NAME", raising=False)
    listed = json.loads(run(capsys, "list", "alice", "--json"))
    assert len(listed) == 2 and all(p["faces"] == 2 for p in listed)
    args = build_parser(("facefleet.tools.people_cli",)).parse_args(
        ["people", "name", "alice", "1", "Ann"]
    )
    assert args.func(args) == 2
    assert "FACE_GROUP_BUCKET_NAME" in capsys.readouterr().out
