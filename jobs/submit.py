"""spark-submit entry point (spark-submit needs a .py file): same arguments as `mmoe`.

    spark-submit --master yarn jobs/submit.py score --dataset synth --ds 2026-11-03 --model DIR
"""

from jobs.cli import main

if __name__ == "__main__":
    main()
