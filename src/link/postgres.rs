//! PostgreSQL: the registry's and the audit index's connections (see [`super`]).
