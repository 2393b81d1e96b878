"""FaceFleet worker package."""
