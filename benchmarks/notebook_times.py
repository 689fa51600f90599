"""Print each notebook's execution time and the total (the budget: 60 s each, 10 min in all).

Usage: python benchmarks/notebook_times.py notebooks/*.ipynb
"""

import sys

from restrained.notebooks import main

if __name__ == "__main__":
    sys.exit(main(["time", *sys.argv[1:]]))
