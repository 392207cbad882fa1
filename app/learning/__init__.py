"""Online learning building blocks: pure, synchronous, one concept per module.

- :mod:`app.learning.features`: a customer's window as a numeric feature dict.
- :mod:`app.learning.model`: :class:`~app.learning.model.MomentModel`, a River
  classifier with progressive evaluation and drift detection.
- :mod:`app.learning.segments`: :class:`~app.learning.segments.Segmenter`,
  online clustering of behaviour vectors into micro-segments.
- :mod:`app.learning.labels`: scored examples waiting for their delayed outcome.
- :mod:`app.learning.snapshot`: HMAC-signed model snapshots.
- :mod:`app.learning.config`: :class:`~app.learning.config.LearningConfig`.

Nothing here knows about Kafka, Redis or asyncio; replay and the streaming
worker use the same code.
"""
