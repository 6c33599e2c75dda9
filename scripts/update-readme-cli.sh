#!/usr/bin/env bash
# Rewrites README.md's CLI reference from the binary's own --help (tests/readme_cli.rs checks
# that they agree). Usage: scripts/update-readme-cli.sh [path/to/kiln]
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${1:-target/debug/kiln}
python3 - "$KILN" <<'PY'
import re, subprocess, sys
kiln = sys.argv[1]
text = open("README.md").read()
def help_of(args):
    return subprocess.run([kiln, *args, "--help"], check=True, capture_output=True, text=True).stdout.rstrip("\n")
def block(heading, args):
    global text
    pattern = re.compile(r"(" + re.escape(heading) + r"\n\n```text\n)(.*?)(\n```)", re.S)
    if not pattern.search(text):
        sys.exit(f"README.md: no ```text block after {heading!r}")
    text = pattern.sub(lambda m: m.group(1) + help_of(args) + m.group(3), text, count=1)
block("## CLI reference", [])
for command in re.findall(r"^### kiln (\S+)$", text, re.M):
    block(f"### kiln {command}", [command])
open("README.md", "w").write(text)
PY
