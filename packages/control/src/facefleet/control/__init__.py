"""FaceFleet control core: the pure decisions (dispatch, cutover, routing, pricing) and their thin
AWS adapters. Needs no Prefect; the Lambda zip is this package plus facefleet.common."""
