"""`python -m repro.claims [--results-dir DIR] [--out-dir DIR] [--strict]`: the claims report (repro/claims/report.py;
console script: repro-claims)."""

import sys

from repro.claims.report import main

if __name__ == "__main__":
    sys.exit(main())
