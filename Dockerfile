# One image for every Sluice service; docker-compose.yml picks the module.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock

COPY shared ./shared
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-cache-dir --no-deps .

USER nobody
