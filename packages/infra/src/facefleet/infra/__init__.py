"""FaceFleet infra package."""
