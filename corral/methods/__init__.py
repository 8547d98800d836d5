# ruff: noqa: F403 - the package's names are its modules' (and corral.results')
"""The control methods, each declared once (declaration.py): name, typed params, typed
result, scope, how a limited caller sees it, its REST routes, its CLI command, its help.

The daemon implements them (daemon/*handlers.py, one module per domain, called
through daemon/api.py's one Dispatcher by every front end); the CLI calls them; both
import this package, so a method cannot drift between the two. A method's docstring is
its help text. Methods that change state are `mutating` and are written to the audit log;
each names the scope a caller must hold (DESIGN section 7). One module per namespace (or
a few close ones), as circus keeps one command per file.

Each method also declares what it answers (`result`, a Struct of corral.results): the
CLI decodes answers into it and reads fields, and it is the one schema an OpenAPI
document is generated from. What the engine shows of itself (a task's views in
corral.taskviews; a replica's status, a revision, a node, a tenant's use in corral.views)
is one Struct each, the engine's own, with no twin here: this package is imported by every
CLI command and must not pull in the engine; tests/test_methods.py holds the daemon's
answers to these types.
"""

from ..results import *
from .access import *
from .agents import *
from .approvals import *
from .calls import *
from .cluster import *
from .daemon import *
from .declaration import *
from .definitions import *
from .events import *
from .gateway import *
from .logs import *
from .mcp import *
from .packages import *
from .stats import *
from .tasks import *
from .tenants import *
