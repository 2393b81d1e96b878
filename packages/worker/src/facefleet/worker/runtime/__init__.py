"""The worker runtime: the SQS consumer loop, outcome classification, the Spot notice watcher."""
