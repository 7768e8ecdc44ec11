import sys

from pyfastmta.cli.main import main

sys.exit(main())
