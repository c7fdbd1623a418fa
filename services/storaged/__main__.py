import sys

from services.storaged.service import StoragedService
from shared.daemon import main

sys.exit(main("storaged", StoragedService))
