"""The op implementations a missed step runs: file operations (COPY, ADD, WORKDIR) and the
mounts of RUN."""
