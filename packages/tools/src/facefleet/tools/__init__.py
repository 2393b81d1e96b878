"""FaceFleet tools: the `facefleet` CLI, the demo, the simulator and the grouping quality lab."""
