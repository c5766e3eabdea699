//! NATS: the audit witness's connection (see [`super`]).
