import sys

from pipeserve.cli import main

sys.exit(main())
