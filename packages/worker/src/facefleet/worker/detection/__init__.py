"""Detection worker: image decoding, face analysis and the SQS handler."""
