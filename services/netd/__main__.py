import sys

from services.netd.service import NetdService
from shared.daemon import main

sys.exit(main("netd", NetdService))
