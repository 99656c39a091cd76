"""The investigator console: server-rendered pages over the case store (issue 31 item 4).

``mount.install`` adds its routes (all under ``/console``, none in the OpenAPI spec) and its
static files (``/console/static/``) to the app. Modules: ``core`` (the case store, sessions,
forms, audit), ``security`` (cookie, CSRF, headers), ``render`` (the Jinja2 environment),
``errors`` (errors as pages), ``queue`` (filters and SLA), ``case_page`` (what a case page
shows), ``routes_auth``, ``routes_cases``, ``routes_report`` (the routes); the charts, the
map, the evidence, the narrative and the SAR draft are ``charts``, ``geo``, ``evidence``,
``narrative`` and ``sar``. docs/console.md describes the console for its users.
"""
