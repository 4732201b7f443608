# The read side of logprobe (dashboard, CLI, alert watcher) over a mounted data root.
# No torch or vLLM: collectors run inside your trainer, not in this image.
FROM python:3.11-slim
WORKDIR /opt/logprobe
COPY requirements.txt requirements-dashboard.txt requirements-torch.txt requirements-vllm.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-dashboard.txt
COPY logprobe ./logprobe
COPY app ./app
COPY collectors ./collectors
COPY storage ./storage
COPY monitor ./monitor
RUN pip install --no-cache-dir --no-deps . && rm -rf /opt/logprobe/*
ENV LOGPROBE_DIR=/data
VOLUME ["/data"]
EXPOSE 8501
ENTRYPOINT ["logprobe"]
CMD ["ui", "--host", "0.0.0.0", "--port", "8501"]
