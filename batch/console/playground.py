"""The mapping playground (issue 12 point 4): its routes, mounted by batch.console.app under
/playground when this list is not empty (the navigation shows the link then). A placeholder
until the playground is built; see batch/console/__init__.py for how a page is written.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
