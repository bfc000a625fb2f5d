"""What every command runs on: files that lose nothing, processes and devices, mixed precision, logs, run folders."""
