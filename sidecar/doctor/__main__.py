from sidecar.doctor.cli import main

raise SystemExit(main())
