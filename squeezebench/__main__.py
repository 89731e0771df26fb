import sys

from squeezebench.cli import main

sys.exit(main())
