"""Run the telemetry service: `python -m services.telemetry`."""

from services.telemetry.app import make_app
from shared.service import run
from shared.settings import get_settings

if __name__ == "__main__":
    run("telemetry", get_settings(), make_app)
