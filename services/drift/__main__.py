"""Run the drift service: `python -m services.drift`."""

from services.drift.app import SERVICE_NAME, make_app
from shared.service import run
from shared.settings import get_settings

if __name__ == "__main__":
    run(SERVICE_NAME, get_settings(), make_app)
