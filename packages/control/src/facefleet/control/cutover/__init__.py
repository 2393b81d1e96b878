"""Gradual cutover from the ECS service to Batch: `machine` (pure state machine and gates),
`health` (the CloudWatch and dead-letter reads the gates look at), `effects` (SSM state, ECS, SNS,
returning messages). The Prefect flows around them are `facefleet.flows.cutover`."""
