"""The grouping quality lab: scores, baselines, LFW evaluation (`facefleet evaluate PATH`)."""
