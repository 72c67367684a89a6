"""The architecture names, in a module without torch so the CLI can list them instantly."""

ARCHS = ("mmoe", "omoe", "shared-bottom", "ple", "single-task")
