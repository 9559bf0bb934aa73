from lmtune.cli import main

raise SystemExit(main())
