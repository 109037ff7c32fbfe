"""Shadow traffic: copies of live calls go to a candidate revision, whose answers are compared with
the primary's and never reach the client (``tidal shadow``).

``compare`` holds the pure comparators, ``report`` the pure summary, ``mirror`` the background
copying, ``recorder`` the batched writes of the results.
"""
