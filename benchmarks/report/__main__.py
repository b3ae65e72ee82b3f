"""``python -m benchmarks.report``: see the package docstring."""
import sys

from . import main

if __name__ == "__main__":  # asv imports this module too while discovering benchmarks
    sys.exit(main())
