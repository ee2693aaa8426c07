from blindkey.proxy.cli import main

raise SystemExit(main())
