import sys

from services.gateway.streaming.service import StreamdService
from shared.daemon import main

sys.exit(main("streamd", StreamdService))
