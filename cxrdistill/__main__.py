import sys

from cxrdistill.cli import main

sys.exit(main())
