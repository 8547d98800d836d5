-- layout 35 (storeschema.OLDEST): made by scripts/fresh_schema.py, not by hand
CREATE TABLE runtime_agents (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        added_at REAL NOT NULL
    );

CREATE TABLE agent_state (
        name TEXT NOT NULL,
        replica INTEGER NOT NULL,
        time REAL NOT NULL,
        state TEXT NOT NULL, tenant TEXT NOT NULL DEFAULT 'default',
        PRIMARY KEY (name, replica)
    );

CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        uid INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        method TEXT NOT NULL,
        params TEXT NOT NULL,
        outcome TEXT NOT NULL
    , who TEXT, tenant TEXT);

CREATE TABLE incarnations (
        owner TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        start_time INTEGER NOT NULL,
        started_at REAL NOT NULL
    );

CREATE TABLE processes (
        token TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        record TEXT NOT NULL
    );

CREATE INDEX processes_owner ON processes (owner);

CREATE TABLE scaled (
    agent TEXT PRIMARY KEY,
    replicas INTEGER NOT NULL,
    declared INTEGER NOT NULL,
    time REAL NOT NULL
, tenant TEXT NOT NULL DEFAULT 'default');

CREATE TABLE "tasks" (
        id TEXT PRIMARY KEY,
        arrival INTEGER,
        agent TEXT NOT NULL,
        priority INTEGER NOT NULL,
        timeout REAL NOT NULL,
        retries_left INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        status TEXT NOT NULL,
        tool_calls INTEGER NOT NULL DEFAULT 0,
        input BLOB,
        output BLOB,
        error BLOB,
        attempts BLOB NOT NULL,
        progress BLOB
    , usage BLOB, not_before REAL, tenant TEXT, options BLOB);

CREATE INDEX tasks_arrival ON tasks (arrival);

CREATE INDEX tasks_unfinished ON tasks (arrival) WHERE finished IS NULL;

CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;

CREATE INDEX tasks_created ON tasks (created);

CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        agents TEXT,
        created REAL NOT NULL,
        expires REAL
    , tenant TEXT);

CREATE TABLE metrics_history (
    resolution INTEGER NOT NULL,
    time REAL NOT NULL,
    agent TEXT NOT NULL,
    agents REAL NOT NULL, replicas REAL NOT NULL, serving REAL NOT NULL, cpu_percent REAL NOT NULL, rss_bytes REAL NOT NULL, queued REAL NOT NULL, running REAL NOT NULL,
    seconds REAL NOT NULL,
    finished INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    exec_sum REAL NOT NULL,
    exec_count INTEGER NOT NULL,
    h0 INTEGER NOT NULL, h1 INTEGER NOT NULL, h2 INTEGER NOT NULL, h3 INTEGER NOT NULL, h4 INTEGER NOT NULL, h5 INTEGER NOT NULL, h6 INTEGER NOT NULL, h7 INTEGER NOT NULL, h8 INTEGER NOT NULL, h9 INTEGER NOT NULL, h10 INTEGER NOT NULL, h11 INTEGER NOT NULL, h12 INTEGER NOT NULL, h13 INTEGER NOT NULL, h14 INTEGER NOT NULL, h15 INTEGER NOT NULL, h16 INTEGER NOT NULL, tenant TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (resolution, agent, time)
) WITHOUT ROWID;

CREATE INDEX metrics_history_time ON metrics_history (resolution, time);

CREATE TABLE runtime_tenants (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        declared TEXT,
        time REAL NOT NULL
    );

CREATE TABLE step_results (
        hash BLOB PRIMARY KEY,
        size INTEGER NOT NULL,
        body BLOB,
        ref TEXT
    ) WITHOUT ROWID;

CREATE TABLE steps (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        args BLOB NOT NULL,
        result BLOB,
        PRIMARY KEY (task_id, seq, name)
    ) WITHOUT ROWID;

CREATE INDEX steps_result ON steps (result);

CREATE TABLE session_tasks (
        task_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        session TEXT NOT NULL,
        gen INTEGER NOT NULL
    , tenant TEXT NOT NULL DEFAULT '');

CREATE TABLE definitions (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        revision INTEGER NOT NULL,
        time REAL NOT NULL,
        who TEXT NOT NULL,
        tenant TEXT,
        change TEXT NOT NULL,
        spec TEXT,
        PRIMARY KEY (kind, name, revision)
    ) WITHOUT ROWID;

CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        last_fire REAL NOT NULL,
        fires INTEGER NOT NULL DEFAULT 0,
        last_started TEXT,
        paused INTEGER
    ) WITHOUT ROWID;

CREATE TABLE "sessions" (
        tenant TEXT NOT NULL,
        agent TEXT NOT NULL,
        session TEXT NOT NULL,
        gen INTEGER NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL,
        tasks INTEGER NOT NULL,
        holder TEXT,
        state BLOB,
        PRIMARY KEY (tenant, agent, session)
    ) WITHOUT ROWID;

CREATE INDEX session_tasks_of ON session_tasks (tenant, agent, session, gen);

CREATE TABLE "revisions" (
        agent TEXT NOT NULL,
        tenant TEXT NOT NULL DEFAULT 'default',
        revision INTEGER NOT NULL,
        time REAL NOT NULL,
        who TEXT NOT NULL,
        change TEXT NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (agent, tenant, revision)
    );

CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant TEXT,
        definition BLOB NOT NULL,
        input BLOB NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        ended REAL,
        deadline REAL,
        output BLOB,
        error TEXT,
        revision INTEGER,
        agents TEXT,
        traceparent TEXT,
        tracestate TEXT
    );

CREATE INDEX calls_status ON calls (kind, status);

CREATE INDEX calls_named ON calls (kind, name);

CREATE TABLE call_steps (
        call_id TEXT NOT NULL,
        step TEXT NOT NULL,
        item INTEGER NOT NULL,
        task_id TEXT,
        status TEXT NOT NULL,
        started REAL,
        ended REAL,
        output BLOB,
        error TEXT,
        PRIMARY KEY (call_id, step, item)
    ) WITHOUT ROWID;

CREATE TABLE task_output (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        n INTEGER NOT NULL,
        data TEXT NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (task_id, attempt, n)
    ) WITHOUT ROWID;

CREATE TABLE asks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        tenant TEXT,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        agent TEXT NOT NULL,
        key TEXT NOT NULL,
        subject BLOB NOT NULL,
        created REAL NOT NULL,
        deadline REAL,
        outcome TEXT,
        ended REAL,
        decided_by TEXT,
        data BLOB,
        UNIQUE (task_id, key)
    );

CREATE INDEX asks_pending ON asks (created) WHERE outcome IS NULL;

CREATE TABLE call_signals (
        call_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        key TEXT,
        data BLOB NOT NULL,
        sent REAL NOT NULL,
        sender TEXT,
        taken_by TEXT,
        PRIMARY KEY (call_id, seq)
    ) WITHOUT ROWID;

CREATE UNIQUE INDEX call_signals_key ON call_signals (call_id, key) WHERE key IS NOT NULL;

CREATE TABLE idempotency_keys (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        task_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;

CREATE INDEX idempotency_keys_held ON idempotency_keys (tenant, created);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created);

CREATE TABLE stopped (
    agent TEXT NOT NULL,
    replica INTEGER NOT NULL,
    who TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (agent, replica)
) WITHOUT ROWID;

CREATE TABLE removed_agents (
        agent TEXT NOT NULL,
        tenant TEXT NOT NULL,
        removed REAL NOT NULL,
        PRIMARY KEY (agent, tenant)
    ) WITHOUT ROWID;

CREATE TABLE labels (
        key TEXT NOT NULL,
        label TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (key, label)
    ) WITHOUT ROWID;

CREATE TABLE tool_pins (
        server TEXT NOT NULL,
        tool TEXT NOT NULL,
        pin BLOB NOT NULL,
        PRIMARY KEY (server, tool)
    ) WITHOUT ROWID;

CREATE TABLE push_configs (
        task_id TEXT NOT NULL,
        config_id TEXT NOT NULL,
        record BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (task_id, config_id)
    ) WITHOUT ROWID;

