"""`python -m blindkey.broker serve --socket PATH`: how the proxy spawns the broker."""

from blindkey.broker.serve import main

raise SystemExit(main())
