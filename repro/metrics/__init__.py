"""Scorers: GLUE from scikit-learn/scipy; E2E, WebNLG and DART as their official evaluations compute them."""
