# Shared helpers for the project's scripts (sourced, not run).

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# Caches live outside the checkout: TOKENLEASE_CACHE_DIR, else $XDG_CACHE_HOME/tokenlease,
# else ~/.cache/tokenlease.
cache_dir() {
  echo "${TOKENLEASE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenlease}"
}

# Reuse one cargo target dir outside the checkout, so CI and later runs don't rebuild.
default_target_dir() {
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    echo "$CARGO_TARGET_DIR"
  else
    echo "$(cache_dir)/target"
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "== installing Rust (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
}
