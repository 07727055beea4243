import sys

from updater.settings import one_blas_thread

one_blas_thread()  # before updater.main imports numpy
from updater.main import main  # noqa: E402

sys.exit(main())
