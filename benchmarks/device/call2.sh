#!/bin/bash
# Device call 2: carry the second part of SmolLM2's GGUF (the transfer limit is 64 MiB a call).
mkdir -p /tmp/keep && cp .gpu2/gguf.part2 /tmp/keep/ && ls -la /tmp/keep && ls /tmp/bench-full
