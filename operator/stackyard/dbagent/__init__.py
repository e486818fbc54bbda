"""The database sidecar: watches PostgreSQL instances, keeps history in SQLite, alerts, exports to Prometheus."""
