import sys

from updater.main import main

sys.exit(main())
