"""The public Spark UDF's import path (CONTRACT.md): ``from jobs.udf import mmoe_udf``.

The implementation lives with the scoring runtime (``jobs/runtime/udf.py``); its path there
keeps working for code written against it.
"""

from jobs.runtime.udf import mmoe_udf

__all__ = ["mmoe_udf"]
