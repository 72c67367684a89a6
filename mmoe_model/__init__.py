"""The PyTorch model library: feature encoding, the multi-task architectures, training and
artifacts. It never imports pyspark or ``jobs``; the submodules are imported explicitly
(``mmoe_model.artifact``, ``mmoe_model.trainer``, ...) so that ``mmoe_model.errors`` stays cheap.
"""
