"""Adapters that run the authors' code beside ours, for the parity tests (tests/) and bench.py: one module per
official repository (ssrdefnet, ipassr, nafnet for NAFSSR, srnet, isrrescnet). Each reads a checkout that an
environment variable points at (its OFFICIAL_ENV; nothing of it is committed here), names the zoo networks it runs
(OFFICIAL_NAMES) and gives bench.py `official_runner(name, scale, ours)`; official/loading.py holds what they share.
"""
