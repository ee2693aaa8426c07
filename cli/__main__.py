from blindkey.cli.main import main

raise SystemExit(main())
