"""Pipeline stages: each reads through jobs.warehouse, runs a pure transform that returns a typed
result, and writes through jobs.warehouse."""
