"""``tidal simulate``: replay invocation traces through the keep-alive policies on a virtual clock.

``traces`` reads the Azure Functions 2019 and 2021 traces and plain arrival files, ``synthetic``
makes a workload with the 2019 trace's published shape, ``engine`` replays a trace through
``tidal.keepalive.policy.windows`` (the code the live gateway runs) and ``report`` writes
summary.json, CSV files and the trade-off plot.
"""
