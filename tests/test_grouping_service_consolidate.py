"""The consolidation pass on real servers: triggered by growth in the worker, and on demand by
`facefleet people consolidate`; ids, names and corrections survive, and the stored state keeps
working for later incremental grouping."""

from __future__ import annotations

import numpy as np
import pytest

from facefleet.common.documents import FaceDoc
from facefleet.worker.grouping.batch_partition import ConsolidateParams
from tests.grouping_service_helpers import (
    Gallery,
    Identities,
    Setup,
    by_identity,
    make_setup,
    people,
    store_for,
)
from tests.test_grouping_service_corrections import faces_of, run


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch)


def test_growth_triggers_a_pass_and_the_command_keeps_ids_names_and_pins(setup, capsys) -> None:
    params = ConsolidateParams()
    g = Gallery(setup.env, "alice", setup.bucket, Identities(4))
    setup.request("alice", g.photos("a", 6, range(4)))  # 24 faces: past min_faces
    setup.consume(setup.service())
    store = store_for(setup.env)
    doc = store.user_doc("alice")
    assert doc is not None and doc["consolidated_faces"] == 24 >= params.min_faces
    owner = {i: next(iter(p)) for i, p in by_identity(g.truth, people(setup.env, "alice")).items()}
    assert len(set(owner.values())) == 4

    run(capsys, "name", "alice", str(owner[0]), "Ann")
    pinned = faces_of(g, 1)[0]
    run(capsys, "move", "alice", pinned, str(owner[2]))  # the user's (odd) placement
    before = people(setup.env, "alice")
    out = run(capsys, "consolidate", "alice")
    assert "faces: 24" in out
    after = people(setup.env, "alice")
    assert after[owner[0]]["name"] == "Ann"
    assert after[owner[0]]["members"] == before[owner[0]]["members"]
    assert pinned in after[owner[2]]["members"]  # a pin is a constraint the pass keeps
    assert set(after) == set(before)  # no person renamed, retired or invented
    assert run(capsys, "consolidate", "alice").count("faces_moved: 0") == 1  # idempotent

    # Later photos, grouped by a fresh worker from the stored state, join the same people.
    known = set(g.truth)
    setup.request("alice", g.photos("b", 1, range(4)))
    setup.consume(setup.service())
    stored = people(setup.env, "alice")
    for face_id in set(g.truth) - known:
        assert face_id in stored[owner[g.truth[face_id]]]["members"]


def test_face_doc_keeps_the_raw_embedding_norm() -> None:
    face = FaceDoc(
        "u", "p", "m", 0, (0, 0, 10, 10), ((0.0, 0.0),) * 5, 0.9, 0.8, np.ones(4, np.float32) / 2
    )
    assert FaceDoc.from_mongo(face.to_mongo()).embedding_norm is None
    face.embedding_norm = 17.25
    assert FaceDoc.from_mongo(face.to_mongo()).embedding_norm == 17.25
