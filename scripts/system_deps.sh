#!/bin/sh
# What `make test` needs from the machine beside Python packages: Debian's Chromium (the dashboard's
# browser tests drive it; Playwright cannot download browsers here) and a Java runtime (the Spark
# test runs pyspark in local mode, which needs Java 17+: Debian 12's default-jre-headless). As root
# they are installed with apt-get; otherwise one message names the command to run.
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v java >/dev/null 2>&1 || missing="$missing default-jre-headless"
[ -z "$missing" ] && exit 0
uid="$(id -u)"
if [ "$uid" -ne 0 ]; then
  echo "make test needs Debian packages:$missing. Run as root: apt-get install -y$missing" >&2
  exit 1
fi
echo "installing$missing (apt-get) ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
