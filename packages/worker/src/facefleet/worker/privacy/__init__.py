"""Privacy has one home: everything that makes FaceFleet forget a face.

- `photos`: a photo's versions in the gallery database: storing one (a replacement removes the
  older version's faces and crops), deleting one (tombstone, faces, crops, image document);
- `forget`: faces that are gone taken out of a user's people, and the grouping worker's hooks for
  forget and erase requests and for users who turned face recognition off;
- `erasure`: every trace of a user, with a receipt;
- `worker`: the deployed grouping worker (grouping's handler with these hooks).

Privacy builds on detection's and grouping's stores; grouping never imports privacy back
(import-linter contract in pyproject.toml).
"""
