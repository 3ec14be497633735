"""The simulated Kuaishou world: the embedded default data that ``make run`` trains on.

``config`` holds the presets, ``entities`` the users/authors/videos/lives and hidden
highlights, ``traffic`` the exposures, ``feedback`` the delayed events and click oracle,
``world`` generation and writing, ``summary`` the statistics and observability check.
"""
