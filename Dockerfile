# syntax=docker/dockerfile:1
# Build stage: a wheel of stackyard and its pinned dependencies.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the wheels, a numeric non-root user, exec-form entrypoint.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels stackyard==0.1.0 \
    && rm -rf /wheels
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 9090 9188
ENTRYPOINT ["stackyard"]
CMD ["run"]
