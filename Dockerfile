# mtls-proxy: docker run -v ./certs:/certs:ro -v ./config.yaml:/etc/mtls-proxy/config.yaml:ro -p 8443:8443 IMAGE
FROM python:3.11-slim

# The runtime dependencies at the exact versions and hashes of requirements.lock (generated from
# pyproject.toml by scripts/lock.sh), in their own layer; then the package alone, checked against them;
# then drop privileges.
COPY requirements.lock /src/
RUN pip install --no-cache-dir --require-hashes -r /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY mtls_proxy /src/mtls_proxy
RUN pip install --no-cache-dir --no-deps /src && pip check && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mtls

USER 10001
# Certificates, keys and CRLs are mounted at /certs, the config at /etc/mtls-proxy/config.yaml.
VOLUME ["/certs"]
EXPOSE 8443
# Liveness: the admin listener's /healthz (admin.listen, default 127.0.0.1:9900 inside the container).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9900/healthz', timeout=2)"]
# Exec form: the proxy is PID 1 and receives SIGHUP (reload) and SIGTERM (drain) directly.
ENTRYPOINT ["mtls-proxy"]
# JSON log lines on stdout, the container default (override with the config's logging.format by
# replacing the CMD).
CMD ["run", "--config", "/etc/mtls-proxy/config.yaml", "--log-format", "json"]
