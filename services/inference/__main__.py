"""Run the inference service: `python -m services.inference`."""

from services.inference.app import SERVICE_NAME, make_app
from shared.service import run
from shared.settings import get_settings

if __name__ == "__main__":
    run(SERVICE_NAME, get_settings(), make_app)
