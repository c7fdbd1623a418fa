import sys

from services.imaged.service import ImagedService
from shared.daemon import main

sys.exit(main("imaged", ImagedService))
