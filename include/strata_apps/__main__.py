"""``python -m strata_apps COMMAND ...``: the ``strata`` command without its console script."""

from strata_apps.cli import main

raise SystemExit(main())
