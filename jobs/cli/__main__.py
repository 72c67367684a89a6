"""``python -m jobs.cli``: the same as the ``mmoe`` console script."""

from jobs.cli import main

main()
