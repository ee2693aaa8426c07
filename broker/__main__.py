"""`python -m blindkey.broker serve --socket PATH`: how the proxy spawns the broker.

The same command tree as `blindkey broker ...`; its handlers are imported only when
chosen, so the broker process never loads the proxy's HTTP stack.
"""

import sys

from blindkey.proxy.cli import main

raise SystemExit(main(["broker", *sys.argv[1:]]))
