"""FaceFleet common package."""
