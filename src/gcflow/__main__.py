from gcflow.cli import main

raise SystemExit(main())
