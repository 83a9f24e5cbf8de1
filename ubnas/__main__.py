import sys

from ubnas.cli import main

sys.exit(main())
