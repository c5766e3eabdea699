-- The central audit index (`popgw audit index`): every gateway node's audit records, read
-- from the witness stream (NATS JetStream). The index is a copy for finding records fast;
-- the nodes' hash chains stay the evidence (`popgw audit verify --index` compares them).
--
-- Both big tables are partitioned by month on the record's time (`at`), so that keeping
-- two years is dropping whole partitions (`[audit.index] retain_months`), never a DELETE.
-- The indexer creates each month's partitions when it first sees a record of that month.

CREATE TABLE audit_record (
    node      text        NOT NULL,
    seq       bigint      NOT NULL,
    at        timestamptz NOT NULL,
    client    text        NOT NULL,
    rpc       text        NOT NULL,
    procedure text        NOT NULL,
    case_id   text        NOT NULL,
    outcome   text        NOT NULL,
    code      text        NOT NULL,
    cache     text        NOT NULL,
    -- The record as chained on its node: hash = SHA-256(prev hash || json).
    hash      text        NOT NULL,
    json      text        NOT NULL,
    PRIMARY KEY (node, seq, at)
) PARTITION BY RANGE (at);

-- An operator's time-ordered queries: by time alone, by client and time, by dossier.
CREATE INDEX audit_record_at ON audit_record (at);
CREATE INDEX audit_record_client_at ON audit_record (client, at);
CREATE INDEX audit_record_case ON audit_record (case_id, at);

-- One row for each person a record is about: its subject (related = false) and every
-- relative or household member whose data it disclosed (related = true). A person's
-- history, the citizen's access report, is one range scan of this key.
CREATE TABLE audit_person (
    pseudonym text        NOT NULL,
    at        timestamptz NOT NULL,
    node      text        NOT NULL,
    seq       bigint      NOT NULL,
    related   boolean     NOT NULL,
    PRIMARY KEY (pseudonym, at, node, seq)
) PARTITION BY RANGE (at);

-- The person rows of one record (`popgw audit verify --index` checks them all).
CREATE INDEX audit_person_record ON audit_person (node, seq);

-- Each node's newest indexed record (the chain continues from it), and where retention
-- has dropped the older ones.
CREATE TABLE audit_index_node (
    node           text        PRIMARY KEY,
    last_seq       bigint      NOT NULL,
    last_hash      text        NOT NULL,
    -- The time of that record: every record of the node up to it is indexed.
    last_at        timestamptz NOT NULL,
    dropped_before timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Messages the indexer could not index (garbled, a broken chain): kept for the operator.
CREATE TABLE audit_index_problem (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    node       text        NOT NULL,
    stream_seq bigint      NOT NULL,
    problem    text        NOT NULL
);
