import sys

from attnkd.cli import main

sys.exit(main())
