"""`python -m repro.claims [--results-dir results] [--out STEM]`: the claims report (repro/claims/report.py)."""

from repro.claims.report import main

main()
