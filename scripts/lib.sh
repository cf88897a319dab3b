# Shared by the scripts in this directory: install missing tools from Debian.
# usage: install_missing COMMAND:PACKAGE ...   (a COMMAND found on PATH or in
# /usr/sbin needs nothing)
install_missing() {
  local need=() pair cmd
  for pair in "$@"; do
    cmd=${pair%%:*}
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing: ${need[*]}" >&2
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
