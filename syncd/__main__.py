import sys

from syncd.cli.main import main

sys.exit(main())
