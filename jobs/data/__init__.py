"""Data generators and ingest: the UCI census ingest and the seeded synthetic impression logs."""
