"""The administrators' web console (`usageplace-batch console --config CONFIG`): the feeds (last
night at a glance), a file's every record, downloads, retry of failed events, and the mapping
playground. A thin layer over the functions the service and the commands use; it reads the same
configuration (reloaded when it changes) and journal.

Modules
    ``app``        ``create_app(config_path, host=...)``: routes + security middleware; ``bind`` /
                   ``serve`` run it with uvicorn
    ``security``   where it may listen without a login, the hashed password, CSRF, confinement
                   of downloads to a feed's folders (read its docstring before adding a route)
    ``state``      ``ConsoleState``: the configuration in force, the journal, the lease store
    ``render``     the one Jinja2 environment and ``render``; ``current_user``; ``console_state``
    ``pages``      the feeds page, the file page, downloads
    ``playground`` the mapping playground's routes

Adding pages (the playground's extension point)
    - ``batch/console/playground.py`` exposes ``routes``: a list of Starlette routes, mounted under
      ``/playground`` (``Route("/", index)`` is ``/playground/``). While the list is empty the
      navigation shows "Playground" greyed out.
    - A page is a function of the request (plain ``def``: it runs in a worker thread and may
      block on the journal or the file system) returning
      ``render(request, "playground.html", {...})``. ``render`` adds what base.html needs: the
      CSRF token (``csrf``), who is logged in (``user``), the configuration problem banner; pass
      ``"nav": "playground"`` to mark the navigation.
    - Templates live in ``batch/console/templates/``, extend ``base.html`` and fill
      ``{% block content %}`` (``{% block head %}`` for a page's own stylesheet or script);
      everything is autoescaped. Static files go in ``batch/console/static/`` (served under
      ``/static/``). The Content-Security-Policy allows scripts and styles only from /static:
      no inline ``<script>`` or ``style=""``, no CDN.
    - Every POST needs the CSRF token: a form carries
      ``<input type="hidden" name="csrf" value="{{ csrf }}">``; a script's ``fetch`` sends the
      header ``X-CSRF-Token`` with the value of ``<meta name="csrf-token">`` (base.html has it).
      ``security.CsrfMiddleware`` refuses anything else with 403 before the route runs.
    - ``console_state(request).loaded`` is the configuration in force (``LoadedService``: the
      feeds' settings and their loaded mappings), ``console_state(request).journal()`` the
      journal (None while none exists). ``current_user(request)`` names who acts (for a saved
      mapping's log line).
    - Never render a secret: the configuration's secret keys hold only ``${ENV}`` references, but
      do not print settings objects whole; ``security.confined(folder, name)`` for any file a
      request names.
"""
