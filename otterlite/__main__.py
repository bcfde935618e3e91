import sys

from otterlite.cli import main

sys.exit(main())
