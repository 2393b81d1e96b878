"""FaceFleet flows package."""
