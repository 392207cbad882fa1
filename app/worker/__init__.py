"""The streaming worker: Faust on Kafka, state in Redis, the detection core in between."""
