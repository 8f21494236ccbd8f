"""Run the moderation service: `python -m services.moderation`."""

from services.moderation.app import SERVICE_NAME, make_app
from shared.scanning import configure_scanner_runtime
from shared.service import run
from shared.settings import get_settings

if __name__ == "__main__":
    configure_scanner_runtime()
    run(SERVICE_NAME, get_settings(), make_app)
