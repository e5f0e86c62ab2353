"""`python -m gcflow`: the same entry point as the `gcflow` console script."""

import sys

try:
    from gcflow.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the CLI
    print("gcflow: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
