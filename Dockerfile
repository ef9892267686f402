# Placeholder until the deployment issue: a minimal CPU image that runs the CLI.
FROM python:3.11-slim
WORKDIR /srv/convewma
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY models ./models
RUN pip install --no-cache-dir -c constraints.txt .
ENTRYPOINT ["convewma"]
