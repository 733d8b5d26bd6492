from metammf_dist.cli import main

raise SystemExit(main())
