"""FaceFleet dashboards and alarms as code."""
