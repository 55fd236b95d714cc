-- Events a forge sent through webhooks, queued for the service's loop. A delivery id is
-- stored once, so a replayed delivery changes nothing.
CREATE TABLE forge_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX forge_events_pending ON forge_events (id) WHERE finished_at IS NULL;
