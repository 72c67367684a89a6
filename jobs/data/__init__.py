"""Data generators and ingest: the UCI census ingest and the seeded synthetic impression logs."""

# The data sets one raw census file becomes (here, not in census.py: the CLI names them without
# importing pyspark).
CENSUS_DATASETS = ("census-group1", "census-group2")
