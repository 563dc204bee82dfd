import sys

from bioscale.cli import main

sys.exit(main())
