"""The people report: per user, each person with a cover face and its face crops, unassigned
faces apart, and links back to the photos. Self-contained: crops and photos are copied next to
the HTML, so it opens from disk with no AWS access."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from facefleet.common.aws import AwsTarget
from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus, PersonDoc
from facefleet.common.repository import GalleryRepository, PeopleRepository


@dataclass
class UserReport:
    user_id: str
    people: list[PersonDoc]
    faces: dict[str, FaceDoc]
    images: dict[str, ImageDoc]
    unassigned: list[str] = field(default_factory=list)


def collect(gallery: GalleryRepository, people: PeopleRepository) -> list[UserReport]:
    reports = []
    for user_id in sorted(gallery.images.distinct("user_id")):
        faces = {f.doc_id: f for f in gallery.faces_of_user(user_id)}
        persons = people.people_of_user(user_id)
        assigned = {face_id for p in persons for face_id in p.member_face_ids}
        images = {
            d["image_id"]: ImageDoc.from_mongo(d) for d in gallery.images.find({"user_id": user_id})
        }
        unassigned = sorted(face_id for face_id in faces if face_id not in assigned)
        reports.append(UserReport(user_id, persons, faces, images, unassigned))
    return reports


class AssetCopier:
    """Copies S3 objects into the report folder once each and returns their relative paths."""

    def __init__(self, out_dir: Path, aws: AwsTarget) -> None:
        self.out_dir = out_dir
        self.s3 = aws.client("s3")
        self.copied: dict[tuple[str, str], str] = {}

    def get(self, bucket: str, key: str) -> str:
        if (bucket, key) not in self.copied:
            relative = Path("assets") / bucket / key
            target = self.out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            self.copied[(bucket, key)] = relative.as_posix()
        return self.copied[(bucket, key)]


def _face_html(face: FaceDoc, report: UserReport, assets: AssetCopier, crop_bucket: str) -> str:
    image = report.images.get(face.image_id)
    photo = assets.get(image.bucket, image.key) if image else ""
    crop = assets.get(crop_bucket, face.crop_key) if face.crop_key else ""
    title = html.escape(f"{face.image_id} face {face.index} (quality {face.quality:.2f})")
    return (
        f'<a class="photo" href="{html.escape(photo)}" title="{title}">'
        f'<img class="face" src="{html.escape(crop)}" alt="{title}"></a>'
    )


def _person_html(
    person: PersonDoc, report: UserReport, assets: AssetCopier, crop_bucket: str
) -> str:
    label = html.escape(person.name or f"Person {person.person_id}")
    members = [report.faces[f] for f in person.member_face_ids if f in report.faces]
    cover = report.faces.get(person.cover_face_id or "")
    cover_html = _face_html(cover, report, assets, crop_bucket) if cover else ""
    crops = "".join(_face_html(f, report, assets, crop_bucket) for f in members)
    return (
        f'<section class="person" data-person="{person.person_id}">'
        f'<div class="cover">{cover_html}</div><h3>{label} '
        f'<small>{len(members)} faces</small></h3><div class="faces">{crops}</div></section>'
    )


def _user_html(report: UserReport, assets: AssetCopier, crop_bucket: str) -> str:
    failed = sum(1 for i in report.images.values() if i.status is ImageStatus.FAILED)
    people = "".join(_person_html(p, report, assets, crop_bucket) for p in report.people)
    unassigned = "".join(
        _face_html(report.faces[f], report, assets, crop_bucket) for f in report.unassigned
    )
    return (
        f'<article class="user" id="{html.escape(report.user_id)}">'
        f"<h2>{html.escape(report.user_id)}</h2><p>{len(report.images)} photos, "
        f"{len(report.faces)} faces, {len(report.people)} people, {failed} failed photos</p>"
        f'{people}<section class="unassigned"><h3>Unassigned faces '
        f'<small>{len(report.unassigned)}</small></h3><div class="faces">{unassigned}</div>'
        "</section></article>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
.person{display:flex;gap:1em;align-items:flex-start;border-bottom:1px solid #ddd;padding:.5em 0}
.cover img{width:96px;height:96px;border:3px solid #3b82f6}
.faces{display:flex;flex-wrap:wrap;gap:4px}.face{width:56px;height:56px;object-fit:cover}
.unassigned{background:#f1f1f1;padding:.5em}small{color:#666;font-weight:normal}
"""


def write_report(
    reports: list[UserReport],
    out_dir: Path,
    crop_bucket: str,
    aws: AwsTarget,
    summary: str = "",
    dashboard_png: str | None = None,
) -> Path:
    """Write out_dir/index.html with its assets; return the HTML path. `dashboard_png`: a
    rendering of the CloudWatch dashboard, relative to out_dir, shown above the people."""
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = AssetCopier(out_dir, aws)
    body = "".join(_user_html(r, assets, crop_bucket) for r in reports)
    if dashboard_png:
        body = (
            f'<details class="dashboard" open><summary>Pipeline dashboard</summary>'
            f'<img src="{html.escape(dashboard_png)}" alt="CloudWatch dashboard" '
            f'style="max-width:100%"></details>{body}'
        )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>FaceFleet people'
        f"</title><style>{STYLE}</style></head><body><h1>FaceFleet people report</h1>"
        f"<p>{html.escape(summary)}</p>{body}</body></html>"
    )
    path = out_dir / "index.html"
    path.write_text(page)
    return path
