"""Whether a user's photos may be indexed: the deployment's consent mode and the user's choice.

FACE_RECOGNITION_CONSENT=opt_out (the default, the gallery's behaviour so far): every user is
indexed until the gallery's `users` document says `face_recognition: false`.
FACE_RECOGNITION_CONSENT=opt_in: a user is indexed only once that document says
`face_recognition: true` (an explicit opt-in, e.g. `facefleet people recognition --user U on`);
without it a photo is marked done with no faces, no crops and no embeddings computed.

Only an explicit `false` erases what is stored (the opt-out). A user without an explicit choice
under opt_in keeps faces indexed before the mode changed: switching the mode erases nothing by
itself (an erasure is irreversible; a setting flipped by mistake must not destroy libraries).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from facefleet.common.documents import ImageDoc, ImageStatus
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import GalleryRepository


class ConsentMode(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


class Recognition(StrEnum):
    ON = "on"
    OFF = "off"  # the user switched it off: store nothing, erase what is left
    NO_CONSENT = "no_consent"  # opt_in and no opt-in yet: store nothing, erase nothing


REASONS = {
    Recognition.OFF: "face recognition is off for this user",
    Recognition.NO_CONSENT: "no consent to face recognition yet (FACE_RECOGNITION_CONSENT=opt_in)",
}


def decide(mode: ConsentMode | str, stored: Any) -> Recognition:
    """The user's state from the stored `face_recognition` value (None: never written)."""
    if stored is False:
        return Recognition.OFF
    if ConsentMode(mode) is ConsentMode.OPT_OUT or stored is True:
        return Recognition.ON
    return Recognition.NO_CONSENT


def recognition_of(
    privacy: PrivacyRepository, mode: ConsentMode | str, user_ids: Iterable[str]
) -> dict[str, Recognition]:
    """user -> Recognition, one query for the batch."""
    return {u: decide(mode, v) for u, v in privacy.recognition_settings(user_ids).items()}


def not_indexed(gallery: GalleryRepository, user_id: str) -> list[ImageDoc]:
    """The user's photos marked done without indexing because of consent or the opt-out: what
    `facefleet people reindex` sends again after the user opts in (never done on its own)."""
    query = {
        "user_id": user_id,
        "status": str(ImageStatus.DONE),
        "face_count": 0,
        "reason": {"$in": sorted(REASONS.values())},
    }
    return [ImageDoc.from_mongo(d) for d in gallery.images.find(query).sort("_id", 1)]
