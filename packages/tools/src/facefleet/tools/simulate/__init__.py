"""Cost and latency simulator: replay an upload trace through the dispatch policy on Batch Spot
and through the current always-on ECS service, and compare them (`facefleet simulate`)."""
