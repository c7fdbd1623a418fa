import sys

from services.monitord.service import MonitordService
from shared.daemon import main

sys.exit(main("monitord", MonitordService))
