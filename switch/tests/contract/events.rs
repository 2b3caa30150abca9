//! EventService: Subscribe, acks, and each event's documented fields (events.proto).
