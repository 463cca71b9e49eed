"""Prints the executables cargo reports (`--message-format=json` on stdin), one per line."""
import json
import sys

for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(message["executable"])
