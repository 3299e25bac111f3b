from qc.cli import main

raise SystemExit(main())
