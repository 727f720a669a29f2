"""Results report: a Markdown table plus a self-contained HTML page over one or more run directories.

Modules: :mod:`.collect` (read a run directory; a partial run shows what is there and says what is missing),
:mod:`.format` (numbers and text as shown), :mod:`.document` (what the report says, as plain data) and
:mod:`.render` (the Jinja2 templates of ``templates/`` -> ``report.md`` + ``report.html``). The names below are
the package's interface.
"""

from .collect import collect_run
from .document import COLUMNS, MONITOR_MARK
from .render import write_report

__all__ = ["COLUMNS", "MONITOR_MARK", "collect_run", "write_report"]
