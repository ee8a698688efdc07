"""``ratelimit dashboard``: a read-only web page of a deployment, served by Starlette.

It shows each budget (spent, reserved and limit as a gauge, and the time to
reset), spend per day and model over the last 30 days, the top scopes and
tag values by spend, each quota's utilization per dimension (live), and
recent alerts. Everything it serves ships in this package (``static/``): it
works offline and loads nothing from anywhere else.

- :mod:`~ratelimit.dashboard.views`: the JSON documents, shaped with no I/O.
- :mod:`~ratelimit.dashboard.sources`: what is read from Redis (read commands only).
- :mod:`~ratelimit.dashboard.ledger_sql`: the spend from PostgreSQL (a READ ONLY transaction).
- :mod:`~ratelimit.dashboard.access`: the loopback rule and the token.
- :mod:`~ratelimit.dashboard.app`: the page and the GET endpoints (Starlette).
- :mod:`~ratelimit.dashboard.serving`: uvicorn on a socket bound first.

Needs the ``dashboard`` extra (``pip install 'llm-quota-guard[dashboard]'``);
the views and readers import without it.
"""

#: What to install for the dashboard.
DASHBOARD_EXTRA = "llm-quota-guard[dashboard]"
