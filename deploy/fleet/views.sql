-- Views a Grafana dashboard (PostgreSQL data source) reads; `qc collect` made the tables.
-- psql "postgresql://qc@db.example/qc" -f deploy/fleet/views.sql

-- parts, rejects and yield per box per minute
CREATE OR REPLACE VIEW qc_yield_per_minute AS
SELECT date_trunc('minute', to_timestamp(ts)) AS time, line, station,
       count(*) AS parts,
       count(*) FILTER (WHERE decision = 'reject') AS rejects,
       round(100.0 * count(*) FILTER (WHERE decision = 'pass') / count(*), 2) AS yield_pct
FROM inspections GROUP BY 1, 2, 3;

-- rejects by reason and label (the defect Pareto)
CREATE OR REPLACE VIEW qc_rejects AS
SELECT date_trunc('hour', to_timestamp(ts)) AS time, line, station, reason, label, count(*) AS parts
FROM inspections WHERE decision = 'reject' GROUP BY 1, 2, 3, 4, 5;

-- capture-to-decision latency percentiles per box per minute
CREATE OR REPLACE VIEW qc_latency AS
SELECT date_trunc('minute', to_timestamp(ts)) AS time, line, station,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms
FROM inspections WHERE latency_ms IS NOT NULL GROUP BY 1, 2, 3;

-- the fleet: what each box runs and when it was last heard
CREATE OR REPLACE VIEW qc_fleet AS
SELECT line, station, version, bundle, sha256, threshold, backend, camera,
       to_timestamp(started) AS started, to_timestamp(last_seen) AS last_seen,
       now() - to_timestamp(last_seen) AS silent_for
FROM boxes;

-- alarms over time
CREATE OR REPLACE VIEW qc_alarms AS
SELECT to_timestamp(ts) AS time, split_part(topic, '/', 2) AS line, split_part(topic, '/', 3) AS station, kind, message
FROM alarms;
