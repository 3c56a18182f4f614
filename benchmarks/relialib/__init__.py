"""The pieces of ``reliability.py``: the bad-input cases, running and judging a case, the injected faults (feature
cache, data files, words without word pieces), the results-store faults and the report. Each module imports only
those before it in this list."""
