-- How far each node's records are indexed without a gap: the access report is complete
-- only up to here (a record missing in the middle must not be hidden behind later ones).
-- NULL until the indexer next commits for the node, which computes it from the rows.
ALTER TABLE audit_index_node
    ADD COLUMN contiguous_seq bigint,
    ADD COLUMN contiguous_at  timestamptz;
